// Command rawclient measures raw limits for bench/compare.py, with the standard library only.
//
//	rawclient -mode http -base http://127.0.0.1:PORT/f/TAG -n 1000 -c 16
//	    GETs BASE/<i>.png for i in [0, n) from c goroutines sharing one http.Client (keep-alive),
//	    reads every body to the end; prints one JSON line: files, errors, bytes, seconds, cpu_s.
//	rawclient -mode redis -addr 127.0.0.1:PORT -c 16 -seconds 2 -cmd ping|set|evalsha|ping-pipe16
//	    c connections, each sending one command and waiting for its reply (RESP over TCP);
//	    ping-pipe16 writes 16 PINGs per round trip. Prints ops, round_trips, seconds, cpu_s.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return tv(ru.Utime) + tv(ru.Stime)
}

func emit(v map[string]any) {
	out, _ := json.Marshal(v)
	fmt.Println(string(out))
}

func runHTTP(base string, n, c int) {
	tr := &http.Transport{MaxIdleConns: c, MaxIdleConnsPerHost: c, MaxConnsPerHost: c, Proxy: nil}
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	var next, errs, nbytes int64 = -1, 0, 0
	var wg sync.WaitGroup
	cpu0 := cpuSeconds()
	t0 := time.Now()
	for w := 0; w < c; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := atomic.AddInt64(&next, 1)
				if i >= int64(n) {
					return
				}
				resp, err := client.Get(base + "/" + strconv.FormatInt(i, 10) + ".png")
				if err != nil {
					atomic.AddInt64(&errs, 1)
					continue
				}
				got, err := io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if err != nil || resp.StatusCode != 200 {
					atomic.AddInt64(&errs, 1)
				}
				atomic.AddInt64(&nbytes, got)
			}
		}()
	}
	wg.Wait()
	emit(map[string]any{
		"files": n, "errors": errs, "bytes": nbytes,
		"seconds": time.Since(t0).Seconds(), "cpu_s": cpuSeconds() - cpu0,
	})
}

func resp(args ...string) []byte {
	b := []byte("*" + strconv.Itoa(len(args)) + "\r\n")
	for _, a := range args {
		b = append(b, "$"+strconv.Itoa(len(a))+"\r\n"+a+"\r\n"...)
	}
	return b
}

// readReply reads one RESP reply (simple types, bulk strings, flat arrays) and fails on errors.
func readReply(r *bufio.Reader) error {
	line, err := r.ReadString('\n')
	if err != nil {
		return err
	}
	if len(line) < 3 {
		return errors.New("short reply")
	}
	switch line[0] {
	case '+', ':':
		return nil
	case '-':
		return errors.New(line[1 : len(line)-2])
	case '$':
		size, _ := strconv.Atoi(line[1 : len(line)-2])
		if size < 0 {
			return nil
		}
		_, err = r.Discard(size + 2)
		return err
	case '*':
		count, _ := strconv.Atoi(line[1 : len(line)-2])
		for k := 0; k < count; k++ {
			if err := readReply(r); err != nil {
				return err
			}
		}
		return nil
	}
	return errors.New("unexpected reply " + line)
}

// The script of -cmd evalsha: three writes, as a small job-state update would do.
const script = "redis.call('HSET', KEYS[1], 'state', ARGV[1]) " +
	"redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1]) " +
	"return redis.call('ZREM', KEYS[2], ARGV[1])"

func runRedis(addr string, c int, seconds float64, cmd string) {
	setup, err := net.Dial("tcp", addr)
	if err != nil {
		fail(err)
	}
	sr := bufio.NewReader(setup)
	setup.Write(resp("SCRIPT", "LOAD", script))
	line, err := sr.ReadString('\n')
	if err != nil {
		fail(err)
	}
	size, _ := strconv.Atoi(line[1 : len(line)-2])
	buf := make([]byte, size+2)
	if _, err := io.ReadFull(sr, buf); err != nil {
		fail(err)
	}
	sha := string(buf[:size])
	setup.Close()

	var ops, trips, errs int64
	deadline := time.Now().Add(time.Duration(seconds * float64(time.Second)))
	var wg sync.WaitGroup
	cpu0 := cpuSeconds()
	t0 := time.Now()
	for w := 0; w < c; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				atomic.AddInt64(&errs, 1)
				return
			}
			defer conn.Close()
			r := bufio.NewReader(conn)
			key := "rawclient:" + strconv.Itoa(w)
			var req []byte
			per := 1
			switch cmd {
			case "ping":
				req = resp("PING")
			case "set":
				req = resp("SET", key, "0123456789")
			case "evalsha":
				req = resp("EVALSHA", sha, "2", key+":h", key+":z", "member", "1")
			case "ping-pipe16":
				per = 16
				for k := 0; k < per; k++ {
					req = append(req, resp("PING")...)
				}
			default:
				fail(errors.New("unknown -cmd " + cmd))
			}
			var n int64
			for time.Now().Before(deadline) {
				if _, err := conn.Write(req); err != nil {
					atomic.AddInt64(&errs, 1)
					return
				}
				for k := 0; k < per; k++ {
					if err := readReply(r); err != nil {
						atomic.AddInt64(&errs, 1)
						return
					}
				}
				n++
			}
			atomic.AddInt64(&trips, n)
			atomic.AddInt64(&ops, n*int64(per))
		}(w)
	}
	wg.Wait()
	emit(map[string]any{
		"cmd": cmd, "connections": c, "ops": ops, "round_trips": trips, "errors": errs,
		"seconds": time.Since(t0).Seconds(), "cpu_s": cpuSeconds() - cpu0,
	})
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "rawclient:", err)
	os.Exit(1)
}

func main() {
	mode := flag.String("mode", "http", "http or redis")
	base := flag.String("base", "", "http: URL prefix of the files (BASE/<i>.png)")
	n := flag.Int("n", 1000, "http: files to fetch")
	c := flag.Int("c", 16, "concurrent requests / connections")
	addr := flag.String("addr", "127.0.0.1:6379", "redis: host:port")
	seconds := flag.Float64("seconds", 2, "redis: duration")
	cmd := flag.String("cmd", "ping", "redis: ping, set, evalsha or ping-pipe16")
	flag.Parse()
	switch *mode {
	case "http":
		runHTTP(*base, *n, *c)
	case "redis":
		runRedis(*addr, *c, *seconds, *cmd)
	default:
		fail(errors.New("unknown -mode " + *mode))
	}
}
