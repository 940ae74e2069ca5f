package main

import (
	"flag"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	apiserverapp "k8s.io/kubernetes/cmd/kube-apiserver/app"
)

// runAPIServer starts an embedded etcd, then kube-apiserver against it, in this process.
// Flags before "--" configure etcd; everything after "--" goes to kube-apiserver, with
// --etcd-servers added. The etcd data directory persists across runs, so stopping this
// process and starting it again with the same flags keeps every object.
func runAPIServer(args []string) int {
	ours, theirs := args, []string(nil)
	for i, a := range args {
		if a == "--" {
			ours, theirs = args[:i], args[i+1:]
			break
		}
	}
	fs := flag.NewFlagSet("apiserver", flag.ContinueOnError)
	dataDir := fs.String("etcd-data-dir", "", "etcd data directory (kept across restarts)")
	clientPort := fs.Int("etcd-client-port", 2379, "etcd client port on 127.0.0.1")
	peerPort := fs.Int("etcd-peer-port", 2380, "etcd peer port on 127.0.0.1")
	logLevel := fs.String("etcd-log-level", "warn", "etcd log level (debug, info, warn, error)")
	startTimeout := fs.Duration("etcd-start-timeout", 60*time.Second, "how long to wait for etcd to be ready")
	if err := fs.Parse(ours); err != nil {
		return 2
	}
	if *dataDir == "" {
		fmt.Fprintln(os.Stderr, "controlplane apiserver: --etcd-data-dir is required")
		return 2
	}

	etcd, err := startEtcd(*dataDir, *clientPort, *peerPort, *logLevel, *startTimeout)
	if err != nil {
		fmt.Fprintf(os.Stderr, "controlplane apiserver: embedded etcd: %v\n", err)
		return 1
	}
	clientURL := fmt.Sprintf("http://127.0.0.1:%d", *clientPort)
	fmt.Fprintf(os.Stderr, "controlplane apiserver: embedded etcd ready at %s (data %s)\n", clientURL, *dataDir)

	// If etcd dies on its own, the API server is useless: exit so that the fixture sees it.
	go func() {
		if err, ok := <-etcd.Err(); ok && err != nil {
			fmt.Fprintf(os.Stderr, "controlplane apiserver: embedded etcd failed: %v\n", err)
			os.Exit(1)
		}
	}()

	code := runCommand(apiserverapp.NewAPIServerCommand(), append([]string{"--etcd-servers=" + clientURL}, theirs...))
	etcd.Close() // graceful: flushes the backend, so a restart sees every write
	return code
}

func startEtcd(dataDir string, clientPort, peerPort int, logLevel string, timeout time.Duration) (*embed.Etcd, error) {
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, err
	}
	cfg := embed.NewConfig()
	cfg.Name = "controlplane"
	cfg.Dir = filepath.Clean(dataDir)
	cfg.LogLevel = logLevel
	cfg.LogOutputs = []string{"stderr"}
	// A throwaway test cluster: skip fsync (a process restart still keeps all data, the
	// page cache survives it; only a machine crash would lose writes).
	cfg.UnsafeNoFsync = true
	client := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", clientPort)}
	peer := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", peerPort)}
	cfg.ListenClientUrls = []url.URL{client}
	cfg.AdvertiseClientUrls = []url.URL{client}
	cfg.ListenPeerUrls = []url.URL{peer}
	cfg.AdvertisePeerUrls = []url.URL{peer}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, err
	}
	select {
	case <-e.Server.ReadyNotify():
		return e, nil
	case err := <-e.Err():
		e.Close()
		return nil, err
	case <-time.After(timeout):
		e.Server.Stop()
		e.Close()
		return nil, fmt.Errorf("not ready after %s", timeout)
	}
}
