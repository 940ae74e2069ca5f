"""The Lua scripts that make every state change of a job atomic, each safe to run twice.

Every script names its KEYS (built by `keys`) and ARGV in its first lines and uses only
those names; it runs through its one keyword-only wrapper in `calls`. `*_FUNCTION` constants
are Lua functions that scripts (and the tests' own scripts) start with.
"""

from __future__ import annotations

from downloader.store import keys

# Safe to run twice: a claim is fenced by a lease token, so a late or duplicated writer
# changes nothing; and the same call sent again (redis-py resends a call whose reply was lost
# to a timeout) recognises its own earlier write and answers as its first run did. Lease
# expiries are set and compared on Redis's clock, so processes whose clocks disagree cannot
# shorten each other's leases. Field names are the original's (`job:<id>` hashes stay
# readable by it).

#: Redis's own clock, in Unix seconds. Every lease expiry is set and compared with it.
_REDIS_NOW = """
local function redis_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
"""

#: The field/value pairs or ids a script takes after its named ARGV, as one table (a loop, not
#: `unpack`, which fails past a few thousand values).
_ARGV_FROM = """
local function argv_from(first)
  local tail = {}
  for i = first, #ARGV do tail[#tail + 1] = ARGV[i] end
  return tail
end
"""

#: Adds a member to a sorted set, or lowers its score: ZADD LT, which Redis 6.2 has and
#: older servers do not.
_ZADD_LOWER = """
local function zadd_lower(key, score, member)
  local current = redis.call('ZSCORE', key, member)
  if not current or tonumber(current) > score then redis.call('ZADD', key, score, member) end
end
"""

#: Politeness per origin host (keys.HOST_INFLIGHT_PREFIX and neighbours): a job's host from
#: its URL (as `downloader.jobs.hosts.host_of`), the host's rule from the encoded HostPolicy
#: (as `HostPolicy.resolve`), and the release of a lease's host slot.
_HOST_FUNCTIONS = """
local DEFAULT_PORTS = {http = '80', https = '443'}
local function url_host(url)
  if not url then return '' end
  local scheme, authority = string.match(url, '^(%a[^:/?#]*)://([^/?#]*)')
  if not scheme then return '' end
  authority = string.lower((string.gsub(authority, '^.*@', '')))
  local name, port = string.match(authority, '^(.*):(%d+)$')
  if name and DEFAULT_PORTS[string.lower(scheme)] == port then return name end
  return authority
end
local function host_name(host)
  return string.match(host, '^(.*[^:]):%d+$') or host
end
local function host_rule(values, host, name, default)
  local v = values.exact[host] or values.exact[name]
  if v then return tonumber(v) end
  for _, s in ipairs(values.suffixes) do
    if #name > #s[1] and string.sub(name, -#s[1]) == s[1] then return tonumber(s[2]) end
  end
  return tonumber(default)
end
-- A download lease's value in `leases:<aggr>`: its holder's token, then, when the lease holds
-- a slot of its host (`hostinflight:<host>`), that host: "token host". One read tells both.
local function lease_of(value)
  if not value then return nil, nil end
  local token, host = string.match(value, '^(%S+) (%S+)$')
  if token then return token, host end
  return value, nil
end
local function release_host(host_inflight_prefix, host, id)
  if host and host_inflight_prefix and host_inflight_prefix ~= '' then
    redis.call('ZREM', host_inflight_prefix .. host, id)
  end
end
"""

#: Adds ids to a sorted set that its channel's listeners wait on, announcing it when the set
#: goes from empty to non-empty (one message per burst, not per job).
_ZADD_ANNOUNCED = """
local function zadd_announced(key, score, id, channel, message)
  local was_empty = redis.call('EXISTS', key) == 0
  redis.call('ZADD', key, score, id)
  if was_empty and channel ~= '' then redis.call('PUBLISH', channel, message) end
end
"""

#: Queues a new job, creating its aggregation if needed. Returns 1 when queued, 2 when this
#: very call queued it already (redis-py sends a call again when its reply is lost: the
#: retry must not make a second job), 0 when the id belongs to another job (the caller draws
#: another). Its own earlier write is recognised by the request's fields, which no later stage
#: changes (the state fields do), and by its options; or, when the job has run and been
#: delivered meanwhile, by its id waiting in the deletion queue. An aggregation whose queue gets
#: its first job is added to the registry and announced on `channel` ("" = not yet: a held job
#: is announced when released), as is a job due before the queue's head (workers wait for the
#: head's time: a retry's backoff or its host's Retry-After). Creating the aggregation and
#: queueing the job in one step closes the original's race with an idle aggregation's
#: deletion (bug 10.2.5). A queued job costs Redis what it cost the original: its hash and its
#: queue entry (the queue's score is its creation time, which the first claim copies to
#: `jobmeta`).
#: With a client's idempotency key (`fingerprint` not ""), its record is read first: a record
#: of another request answers {"conflict", its job id}, of the same request {"replay", its job
#: id} (nothing is written); without one, the queued job's record is written with it, expiring
#: after `window` seconds. Read and write in one script: concurrent requests with one key make
#: one job.
ENQUEUE = (
    _ARGV_FROM
    + """
local job, aggr, queue, jobopts, registry = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local deletion_queue, idempotency = KEYS[6], KEYS[7]
local score, limit, proxy = ARGV[1], ARGV[2], ARGV[3]
local aggr_id, job_id, channel, options = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local fingerprint, window = ARGV[8], ARGV[9]
local fields = argv_from(10)  -- the job's field/value pairs
local STATE_FIELDS = {DownloadState = true, DownloadCount = true, DownloadMeta = true,
  CallbackState = true, DownloadURL = true, CallbackMeta = true, CallbackCount = true,
  ResponseCode = true, ImageSize = true}
local function written_by_this_call()
  local names, values = {}, {}
  for i = 1, #fields, 2 do
    if not STATE_FIELDS[fields[i]] then
      table.insert(names, fields[i])
      table.insert(values, fields[i + 1])
    end
  end
  local stored = redis.call('HMGET', job, unpack(names))
  for i = 1, #names do
    if stored[i] ~= values[i] then return false end
  end
  return (redis.call('GET', jobopts) or '') == options
end
if fingerprint ~= '' then
  local earlier = redis.call('HMGET', idempotency, 'id', 'fingerprint')
  if earlier[1] then
    if earlier[2] ~= fingerprint then return {'conflict', earlier[1]} end
    if earlier[1] ~= job_id then return {'replay', earlier[1]} end
    -- else this very call wrote it: answered below as its first run was
  end
end
if redis.call('EXISTS', job) == 1 then
  if written_by_this_call() then return 2 end
  return 0
end
if redis.call('ZSCORE', deletion_queue, job_id) then return 2 end
if redis.call('EXISTS', aggr) == 0 then
  redis.call('HSET', aggr, 'ID', aggr_id, 'Limit', limit, 'Proxy', proxy, 'ExpiresAt', '')
end
local head = redis.call('ZRANGE', queue, 0, 0, 'WITHSCORES')
local was_empty = #head == 0
redis.call('HSET', job, unpack(fields))
if options ~= '' then redis.call('SET', jobopts, options) end
if fingerprint ~= '' then
  redis.call('HSET', idempotency, 'id', job_id, 'fingerprint', fingerprint)
  redis.call('EXPIRE', idempotency, window)
end
redis.call('ZADD', queue, score, job_id)
if was_empty then
  redis.call('SADD', registry, aggr_id)
  if channel ~= '' then redis.call('PUBLISH', channel, aggr_id) end
elseif channel ~= '' and tonumber(head[2]) > tonumber(score) then
  -- due before the queue's head (a retry waiting out its backoff or a host's Retry-After),
  -- which idle workers plan to look at only then: announced, once per such head
  redis.call('PUBLISH', channel, aggr_id)
end
return 1
"""
)

#: Puts a job that ENQUEUE held (queued at a score in the future, so that no worker starts it
#: before enough replicas hold it) at its real place in its queue, and announces it: always,
#: as a worker that saw the held score plans to look again only then. 1 released, 0 no longer
#: held (gone); running it twice is harmless.
RELEASE_HELD = """
local queue = KEYS[1]
local id, score, channel, aggr_id = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if not redis.call('ZSCORE', queue, id) then return 0 end
redis.call('ZADD', queue, score, id)
redis.call('PUBLISH', channel, aggr_id)
return 1
"""

#: Undoes a job that ENQUEUE held when too few replicas acknowledged it: its queue entry, hash
#: and options go (and the idempotency record naming it), so the client's 503 means that
#: nothing was queued. Only while it is still
#: held at `held_score` (never a job a worker may hold). 1 undone (also when this very call
#: undid it and only its reply was lost), 0 not held any more.
UNDO_HELD = """
local job, queue, jobopts, idempotency = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id, held_score = ARGV[1], tonumber(ARGV[2])
local score = redis.call('ZSCORE', queue, id)
if not score then
  if redis.call('EXISTS', job) == 0 then return 1 end
  return 0
end
if tonumber(score) ~= held_score then return 0 end
redis.call('ZREM', queue, id)
redis.call('DEL', job, jobopts)
if idempotency ~= '' and redis.call('HGET', idempotency, 'id') == id then
  redis.call('DEL', idempotency)
end
return 1
"""

#: Claims up to `wanted` ready jobs of an aggregation, never past its limit counted over
#: every lease of every process, marks them InProgress and reads them, in one round trip.
#: A job whose origin host is paused (Retry-After), at its fleet-wide limit (counted over
#: `hostinflight:<host>`, taken in the same step) or past its request rate stays queued while
#: the jobs behind it, up to `host_scan` of them, are looked at.
#: Returns {status, ...}: "paused", "full", "hosts" (due jobs, all held back by their hosts),
#: "idle" (nothing queued or claimed: the
#: aggregation leaves the registry, and its hash goes unless the operator manages it, as the
#: original deleted idle aggregations), "empty" (nothing queued, some claimed), the score of
#: the next job that becomes ready, or "ok" followed by the aggregation's hash, what is left
#: ("more" due jobs, else the next queued job's score, "" for none) and, per job, its id, its
#: hash (empty when gone) and {encoded options}. The ids a call leases are kept in
#: its `receipt` for the lease's length: the same call sent again (its reply was lost) answers
#: with those, still held by `token`, instead of leasing more and stranding them.
CLAIM_DOWNLOADS = (
    _REDIS_NOW
    + _ZADD_LOWER
    + _HOST_FUNCTIONS
    + """
local queue, inflight, leases, aggr, paused = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local managed, registry, leases_due, receipt = KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local hosts, host_pauses = KEYS[10], KEYS[11]
local now, lease_seconds, wanted, token = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local default_limit, aggr_id, meta_ttl = tonumber(ARGV[5]), ARGV[6], ARGV[7]
local job_prefix, meta_prefix, options_prefix = ARGV[8], ARGV[9], ARGV[10]
local host_policy, host_scan, host_inflight_prefix = ARGV[11], tonumber(ARGV[12]), ARGV[13]
local host_pause_prefix, host_next_prefix, hosts_seen_seconds = ARGV[14], ARGV[15], tonumber(ARGV[16])
local earlier = redis.call('GET', receipt)
if earlier then
  local out = {'ok', redis.call('HGETALL', aggr), 'more'}
  for _, id in ipairs(cjson.decode(earlier)) do
    if lease_of(redis.call('HGET', leases, id)) == token then
      table.insert(out, id)
      table.insert(out, redis.call('HGETALL', job_prefix .. id))
      table.insert(out, {redis.call('GET', options_prefix .. id) or ''})
    end
  end
  if #out > 3 then return out end  -- else none is ours any more: a claim as any other
end
if redis.call('SISMEMBER', paused, aggr_id) == 1 then return {'paused'} end
local aggregation = redis.call('HGETALL', aggr)
local limit
for i = 1, #aggregation, 2 do
  if aggregation[i] == 'Limit' then limit = tonumber(aggregation[i + 1]) end
end
if not limit or limit <= 0 then limit = default_limit end
local claimed = redis.call('ZCARD', inflight)
local room = limit - claimed
if room <= 0 then return {'full'} end
-- Jobs whose host is paused, full or past its rate stay queued and are stepped over, so
-- other hosts' jobs of this aggregation still run; the look-ahead is bounded by host_scan.
local take = math.min(room, wanted)
local due = redis.call('ZRANGEBYSCORE', queue, '-inf', now, 'WITHSCORES', 'LIMIT', 0, take + host_scan)
local clock = redis_now()
local policy = cjson.decode(host_policy)
local function any_rule(values) return next(values.exact) ~= nil or #values.suffixes > 0 end
-- Hosts are looked at only when some rule could hold a job back: a limit or rate (global, per
-- host, or the job's own), or a host paused somewhere (`host_pauses` lives as long as the
-- longest pause). Without them a job costs no host bookkeeping at all.
local host_rules = tonumber(policy.limit) > 0 or tonumber(policy.rate) > 0
  or any_rule(policy.limits) or any_rule(policy.rates)
local any_pause = not host_rules and #due > 0 and redis.call('EXISTS', host_pauses) == 1
local seen = {}  -- host -> what this call knows of it
local function host_state(host)
  local name = host_name(host)
  return {paused = redis.call('EXISTS', host_pause_prefix .. host) == 1,
          limit = host_rule(policy.limits, host, name, policy.limit),
          rate = host_rule(policy.rates, host, name, policy.rate)}
end
-- a host's slots in use, read once per call and only for a host under a limit
local function host_count(host, h)
  if not h.count then
    local key = host_inflight_prefix .. host
    redis.call('ZREMRANGEBYSCORE', key, '-inf', clock)  -- slots of expired leases come back
    h.count = redis.call('ZCARD', key)
  end
  return h.count
end
local options_of = {}  -- id -> its options, read once: by the host check and for the reply
local function options(id)
  local o = options_of[id]
  if o == nil then o = redis.call('GET', options_prefix .. id) or ''; options_of[id] = o end
  return o
end
-- Whether `host` admits job `id` (whose own limit is `own`), and whether its lease then holds
-- a slot of the host (only under a limit: an unlimited host's downloads are not counted).
local function admits(host, own)
  local h = seen[host]
  if not h then h = host_state(host); seen[host] = h end
  if h.paused or h.closed then return false end
  local limit = h.limit
  if own > 0 and (limit <= 0 or own < limit) then limit = own end
  if limit > 0 and host_count(host, h) >= limit then return false end
  if h.rate > 0 then
    h.closed = true  -- one request per interval per host: the next waits for the key to expire
    local interval = math.max(1, math.floor(1000 / h.rate))
    if not redis.call('SET', host_next_prefix .. host, '1', 'NX', 'PX', interval) then return false end
  end
  if limit > 0 then h.count = h.count + 1 end
  if (limit > 0 or h.rate > 0) and not h.noted then  -- for the dashboard: hosts under a rule
    h.noted = true
    if redis.call('ZADD', hosts, clock, host) == 1 then  -- a new host: forget long-quiet ones
      redis.call('ZREMRANGEBYSCORE', hosts, '-inf', clock - hosts_seen_seconds)
      redis.call('EXPIRE', hosts, hosts_seen_seconds)  -- and all of them once the fleet is idle
    end
  end
  return true, limit > 0
end
local ids, queued_at, slot_of = {}, {}, {}
local skipped = false
for i = 1, #due, 2 do
  if #ids >= take then break end
  local id = due[i]
  local own = tonumber(string.match(options(id), '"host_limit":(%d+)') or 0)
  local host = ''
  if host_rules or any_pause or own > 0 then host = url_host(redis.call('HGET', job_prefix .. id, 'URL')) end
  local admitted, holds_slot = true, false
  if host ~= '' then admitted, holds_slot = admits(host, own) end
  if admitted then
    table.insert(ids, id)
    queued_at[id] = due[i + 1]
    if holds_slot then slot_of[id] = host end
  else
    skipped = true
  end
end
if #ids == 0 then
  if skipped then return {'hosts'} end
  local head = redis.call('ZRANGE', queue, 0, 0, 'WITHSCORES')
  if #head > 0 then return {head[2]} end
  if claimed > 0 then return {'empty'} end
  redis.call('SREM', registry, aggr_id)
  redis.call('ZREM', leases_due, aggr_id)
  if redis.call('SISMEMBER', managed, aggr_id) == 0 then redis.call('DEL', aggr) end
  return {'idle'}
end
local expiry = clock + lease_seconds
local leased, tokens = {}, {}
for _, id in ipairs(ids) do
  table.insert(leased, expiry)
  table.insert(leased, id)
  table.insert(tokens, id)
  local host = slot_of[id]
  if host then
    redis.call('ZADD', host_inflight_prefix .. host, expiry, id)
    table.insert(tokens, token .. ' ' .. host)
  else
    table.insert(tokens, token)
  end
end
redis.call('ZREM', queue, unpack(ids))
redis.call('ZADD', inflight, unpack(leased))
redis.call('HSET', leases, unpack(tokens))
zadd_lower(leases_due, expiry, aggr_id)
redis.call('SET', receipt, cjson.encode(ids), 'PX', math.max(1000, math.floor(lease_seconds * 1000)))
-- What is left, so that the caller claims again only for a reason: 'more' (due jobs were left,
-- by the limit, `wanted` or their hosts), else the next queued job's score, '' when none.
local left = 'more'
if not skipped and #ids * 2 >= #due then
  left = redis.call('ZRANGE', queue, 0, 0, 'WITHSCORES')[2] or ''
end
local out = {'ok', aggregation, left}
for _, id in ipairs(ids) do
  local job = redis.call('HGETALL', job_prefix .. id)
  if #job > 0 then
    redis.call('HSET', job_prefix .. id, 'DownloadState', 'InProgress')
    if redis.call('HSET', meta_prefix .. id, 'StartedAt', now, 'UpdatedAt', now) == 2 then
      -- its first claim: the queue's score was its creation time; `Options` tells the
      -- scripts that end the job that it has an options key to keep or delete with it
      if options(id) ~= '' then
        redis.call('HSET', meta_prefix .. id, 'CreatedAt', queued_at[id], 'Options', '1')
      else
        redis.call('HSET', meta_prefix .. id, 'CreatedAt', queued_at[id])
      end
    end
    -- its life runs from its latest claim (FINISH leaves it: the attempt is short)
    redis.call('EXPIRE', meta_prefix .. id, meta_ttl)
  end
  table.insert(out, id)
  table.insert(out, job)
  table.insert(out, {options(id)})
end
return out
"""
)

#: Extends the leases still held by `token`, and their host slots; returns the ids whose lease
#: was lost (recovered by someone else). Serves downloads and callbacks (no host prefix) alike.
RENEW = (
    _REDIS_NOW
    + _ARGV_FROM
    + _HOST_FUNCTIONS
    + """
local inflight, leases = KEYS[1], KEYS[2]
local lease_seconds, token, host_inflight_prefix = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local ids = argv_from(4)
local lost = {}
local expiry = redis_now() + lease_seconds
for _, id in ipairs(ids) do
  local holder, host = lease_of(redis.call('HGET', leases, id))
  if holder == token then
    redis.call('ZADD', inflight, 'XX', expiry, id)
    if host and host_inflight_prefix ~= '' then
      redis.call('ZADD', host_inflight_prefix .. host, expiry, id)
    end
  else
    table.insert(lost, id)
  end
end
return lost
"""
)

#: Forgets a claimed id that has nothing to run, if the caller still holds its lease: its job
#: hash is gone (`record` ""), or cannot be read and is set aside: `record` (JSON: aggregation,
#: reason, time) goes to the dead letters, `failure` to the dashboard's recent failures; the
#: hash stays as found, in no queue. 1 done (also when this very call did it and only its
#: reply was lost: nobody holds the id, and the dead letter is this call's), 0 lease lost.
DROP_CLAIM = (
    _HOST_FUNCTIONS
    + """
local inflight, leases, dead_letters, failures = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id, token, record, failure, failures_kept = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local host_inflight_prefix = ARGV[6]
local holder, host = lease_of(redis.call('HGET', leases, id))
if holder ~= token then
  if not holder and (record == '' or redis.call('HGET', dead_letters, id) == record) then return 1 end
  return 0
end
redis.call('ZREM', inflight, id)
redis.call('HDEL', leases, id)
release_host(host_inflight_prefix, host, id)
if record ~= '' then
  redis.call('HSET', dead_letters, id, record)
  if failure ~= '' then
    redis.call('LPUSH', failures, failure)
    redis.call('LTRIM', failures, 0, failures_kept - 1)
  end
end
return 1
"""
)

#: The dashboard's count of one finished attempt ("ok", "failed", "retried"; "" counts
#: nothing) in its minute, and a failure record in the capped list of recent failures.
#: Public so that the tests' script that writes the dashboard's history counts as FINISH does.
COUNT_ATTEMPT_FUNCTION = """
local function count_attempt(minute, failures, kind, aggr, failure, ttl, kept)
  if kind ~= '' then
    -- the first count of a kind in this minute's key sets its expiry: once, not per job
    if redis.call('HINCRBY', minute, kind, 1) == 1 then redis.call('EXPIRE', minute, ttl) end
    redis.call('HINCRBY', minute, aggr .. ':' .. kind, 1)
  end
  if failure ~= '' then
    redis.call('LPUSH', failures, failure)
    redis.call('LTRIM', failures, 0, tonumber(kept) - 1)
  end
end
"""

#: Ends an attempt, only if the caller still holds the lease: writes the outcome and moves
#: the id on (back to its queue, to the callback queue -- announced when it was empty -- or,
#: for a finished job without callback, to the deletion queue with its file's location),
#: gives back its host slot (with `pause_seconds`, the answer's Retry-After, the host is
#: paused fleet-wide; a longer pause already set stays), and counts it for the dashboard.
#: 1 done, 0 lease lost, -1 the job hash vanished meanwhile.
#: `call_id` (new per call) is kept in `jobmeta`: the same call sent again after its reply was
#: lost finds it there and answers 1 as its first run did, instead of "lease lost".
FINISH = (
    COUNT_ATTEMPT_FUNCTION
    + _REDIS_NOW
    + _ZADD_ANNOUNCED
    + _ARGV_FROM
    + _HOST_FUNCTIONS
    + """
local inflight, leases, job, target, jobmeta = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local joberrors, deletion_targets, minute, failures = KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local hosts, host_pause, host_pauses = KEYS[10], KEYS[11], KEYS[12]
local id, token, call_id, target_score, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local error_text, errors_kept, meta_ttl, finished = ARGV[6], ARGV[7], ARGV[8], ARGV[9]
local deletion_target, result, counted_as, aggr_id = ARGV[10], ARGV[11], ARGV[12], ARGV[13]
local failure, throughput_ttl, failures_kept, channel = ARGV[14], ARGV[15], ARGV[16], ARGV[17]
local host_inflight_prefix, paused_host, pause_seconds = ARGV[18], ARGV[19], tonumber(ARGV[20])
local fields = argv_from(21)  -- the job's field/value pairs
local holder, slot_host = lease_of(redis.call('HGET', leases, id))
if holder ~= token then
  if redis.call('HGET', jobmeta, 'LastWrite') == call_id then return 1 end
  if redis.call('EXISTS', job) == 0 then return -1 end
  return 0
end
redis.call('ZREM', inflight, id)
redis.call('HDEL', leases, id)
release_host(host_inflight_prefix, slot_host, id)
if pause_seconds > 0 and redis.call('PTTL', host_pause) < pause_seconds * 1000 then
  -- the server asked the whole fleet to wait (Retry-After); a longer pause already set stays
  local pause_end = redis_now() + pause_seconds
  local ms = math.max(1, math.floor(pause_seconds * 1000))
  redis.call('SET', host_pause, tostring(pause_end), 'PX', ms)
  redis.call('ZADD', hosts, pause_end, paused_host)
  -- claims look at hosts while any is paused: this key lives as long as the longest pause
  if redis.call('PTTL', host_pauses) < ms then
    redis.call('SET', host_pauses, tostring(pause_end), 'PX', ms)
  end
end
if redis.call('EXISTS', job) == 0 then return -1 end
if #fields > 0 then redis.call('HSET', job, unpack(fields)) end
if target_score ~= '' then zadd_announced(target, target_score, id, channel, aggr_id) end
if deletion_target ~= '' then redis.call('HSET', deletion_targets, id, deletion_target) end
local meta = {'UpdatedAt', now, 'LastWrite', call_id}
if result ~= '' then table.insert(meta, 'Result'); table.insert(meta, result) end
if finished == '1' then table.insert(meta, 'FinishedAt'); table.insert(meta, now) end
if error_text ~= '' then table.insert(meta, 'Errors'); table.insert(meta, '1') end  -- see CALLBACK_DELIVERED
redis.call('HSET', jobmeta, unpack(meta))  -- its expiry was set by the claim
if error_text ~= '' then
  redis.call('RPUSH', joberrors, error_text)
  redis.call('LTRIM', joberrors, -tonumber(errors_kept), -1)
  redis.call('EXPIRE', joberrors, meta_ttl)
end
count_attempt(minute, failures, counted_as, aggr_id, failure, throughput_ttl, failures_kept)
return 1
"""
)

#: Gives back the job of a lease that expired on Redis's clock (its process died or hung).
#: After `tolerance` such crashes each further one uses up an attempt, and a job out of
#: attempts fails, so a job that kills its worker cannot loop forever. Queues that go from
#: empty to non-empty are announced. 1 requeued, 2 failed, 0 lease not expired (or already
#: recovered), -1 job hash gone. Public so that the tests can recover one job as RECOVER_DUE does.
RECOVER_JOB_FUNCTION = (
    _REDIS_NOW
    + _ZADD_ANNOUNCED
    + _HOST_FUNCTIONS
    + """
local function recover_job(k, a)
  local score = redis.call('ZSCORE', k.inflight, a.id)
  if not score or tonumber(score) > redis_now() then return 0 end
  if a.host_inflight_prefix then
    local _, host = lease_of(redis.call('HGET', k.leases, a.id))
    release_host(a.host_inflight_prefix, host, a.id)
  end
  redis.call('ZREM', k.inflight, a.id)
  redis.call('HDEL', k.leases, a.id)
  if redis.call('EXISTS', k.job) == 0 then return -1 end
  local crashes = redis.call('HINCRBY', k.jobmeta, 'Crashes', 1)
  redis.call('HSET', k.jobmeta, 'UpdatedAt', a.now)
  redis.call('EXPIRE', k.jobmeta, a.meta_ttl)
  if crashes > tonumber(a.tolerance) then
    local count = redis.call('HINCRBY', k.job, 'DownloadCount', 1)
    local max_retries = tonumber(redis.call('HGET', k.job, 'MaxRetries')) or tonumber(a.default_max_retries)
    redis.call('RPUSH', k.joberrors, a.error)
    redis.call('LTRIM', k.joberrors, -tonumber(a.errors_kept), -1)
    redis.call('EXPIRE', k.joberrors, a.meta_ttl)
    redis.call('HSET', k.jobmeta, 'Errors', '1')
    if count > max_retries then
      redis.call('HSET', k.job, 'DownloadState', 'Failed', 'DownloadMeta', a.error)
      redis.call('HSET', k.jobmeta, 'FinishedAt', a.now)
      local url = redis.call('HGET', k.job, 'CallbackURL')
      local dst = redis.call('HGET', k.job, 'CallbackDst')
      if (url and url ~= '') or (dst and dst ~= '') then
        redis.call('HSET', k.job, 'CallbackState', 'Pending')
        zadd_announced(k.callback_queue, a.now, a.id, a.callback_channel, a.aggr_id)
      end
      return 2
    end
  end
  redis.call('HSET', k.job, 'DownloadState', 'Pending')
  zadd_announced(k.queue, a.now, a.id, a.wakeup_channel, a.aggr_id)
  return 1
end
"""
)

#: The fleet's lease recovery pass. Reads only the aggregations whose earliest lease may have
#: expired (`LeasesDue`), gives back their expired leases (`recover_job`), then files each
#: aggregation again under its new earliest expiry, or drops it when nothing is claimed; then
#: gives back expired callback leases. Cost follows the expired leases, not the keyspace.
#: Returns {aggr id, job id, result, ...} of the download leases, then the number of callbacks.
RECOVER_DUE = (
    RECOVER_JOB_FUNCTION
    + """
local leases_due, callback_queue, callback_inflight = KEYS[1], KEYS[2], KEYS[3]
local callback_leases = KEYS[4]
local now, tolerance, default_max_retries, error_text = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local meta_ttl, errors_kept, wakeup_channel, callback_channel = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local max_aggregations, max_leases = tonumber(ARGV[9]), tonumber(ARGV[10])
local queue_prefix, inflight_prefix, leases_prefix = ARGV[11], ARGV[12], ARGV[13]
local job_prefix, meta_prefix, errors_prefix = ARGV[14], ARGV[15], ARGV[16]
local host_inflight_prefix = ARGV[17]
local a = {now = now, tolerance = tolerance, default_max_retries = default_max_retries, error = error_text,
           meta_ttl = meta_ttl, errors_kept = errors_kept, wakeup_channel = wakeup_channel,
           callback_channel = callback_channel, host_inflight_prefix = host_inflight_prefix}
local p = {queue = queue_prefix, inflight = inflight_prefix, leases = leases_prefix, job = job_prefix,
           jobmeta = meta_prefix, joberrors = errors_prefix}
local clock = redis_now()
local out = {}
local due = redis.call('ZRANGEBYSCORE', leases_due, '-inf', clock, 'LIMIT', 0, max_aggregations)
for _, aggr_id in ipairs(due) do
  local inflight = p.inflight .. aggr_id
  a.aggr_id = aggr_id
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', inflight, '-inf', clock, 'LIMIT', 0, max_leases)) do
    a.id = id
    local k = {inflight = inflight, leases = p.leases .. aggr_id, queue = p.queue .. aggr_id,
               job = p.job .. id, jobmeta = p.jobmeta .. id, joberrors = p.joberrors .. id,
               callback_queue = callback_queue}
    table.insert(out, aggr_id)
    table.insert(out, id)
    table.insert(out, recover_job(k, a))
  end
  local head = redis.call('ZRANGE', inflight, 0, 0, 'WITHSCORES')
  if #head == 0 then
    redis.call('ZREM', leases_due, aggr_id)
  else
    redis.call('ZADD', leases_due, head[2], aggr_id)
  end
end
local callbacks = 0
for _, id in ipairs(redis.call('ZRANGEBYSCORE', callback_inflight, '-inf', clock, 'LIMIT', 0, max_leases)) do
  redis.call('ZREM', callback_inflight, id)
  redis.call('HDEL', callback_leases, id)
  if redis.call('EXISTS', p.job .. id) == 1 then
    redis.call('HSET', p.job .. id, 'CallbackState', 'Pending')
    zadd_announced(callback_queue, a.now, id, a.callback_channel, '')
    callbacks = callbacks + 1
  end
end
table.insert(out, callbacks)
-- when the next lease falls due, in seconds from now on Redis's clock ('' when none is held)
local next_due = nil
for _, head in ipairs({redis.call('ZRANGE', leases_due, 0, 0, 'WITHSCORES'),
                       redis.call('ZRANGE', callback_inflight, 0, 0, 'WITHSCORES')}) do
  if #head > 0 and (next_due == nil or tonumber(head[2]) < next_due) then next_due = tonumber(head[2]) end
end
table.insert(out, next_due and tostring(math.max(0, next_due - clock)) or '')
return out
"""
)

#: Claims up to `wanted` due callbacks, counts each attempt and marks it InProgress, and reads
#: them, in one round trip (a job whose hash is gone comes back empty, never recreated).
#: Returns {what is left: 'more' when `wanted` were claimed (more may be due), else the score of
#: the next callback queued or '' for none; then per job: id, hash, {options}, {download result}}.
CLAIM_CALLBACKS = (
    _REDIS_NOW
    + """
local queue, inflight, leases = KEYS[1], KEYS[2], KEYS[3]
local now, lease_seconds, wanted, token = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local job_prefix, options_prefix, meta_prefix = ARGV[5], ARGV[6], ARGV[7]
local ids = redis.call('ZRANGEBYSCORE', queue, '-inf', now, 'LIMIT', 0, wanted)
if #ids == 0 then
  local head = redis.call('ZRANGE', queue, 0, 0, 'WITHSCORES')
  return {head[2] or ''}
end
local expiry = redis_now() + lease_seconds
local leased, tokens = {}, {}
for _, id in ipairs(ids) do
  table.insert(leased, expiry)
  table.insert(leased, id)
  table.insert(tokens, id)
  table.insert(tokens, token)
end
redis.call('ZREM', queue, unpack(ids))
redis.call('ZADD', inflight, unpack(leased))
redis.call('HSET', leases, unpack(tokens))
local left = 'more'
if #ids < wanted then left = redis.call('ZRANGE', queue, 0, 0, 'WITHSCORES')[2] or '' end
local out = {left}
for _, id in ipairs(ids) do
  local job = job_prefix .. id
  local hash = redis.call('HGETALL', job)
  table.insert(out, id)
  if #hash > 0 then  -- one write for the three fields, and the hash sent back as written
    local count = 1
    for i = 1, #hash, 2 do
      if hash[i] == 'CallbackCount' then count = (tonumber(hash[i + 1]) or 0) + 1 end
    end
    redis.call('HSET', job, 'CallbackCount', count, 'CallbackState', 'InProgress', 'CallbackMeta', '')
    for i = 1, #hash, 2 do
      if hash[i] == 'CallbackCount' then hash[i + 1] = tostring(count)
      elseif hash[i] == 'CallbackState' then hash[i + 1] = 'InProgress'
      elseif hash[i] == 'CallbackMeta' then hash[i + 1] = '' end
    end
  end
  table.insert(out, hash)
  table.insert(out, {redis.call('GET', options_prefix .. id) or ''})
  table.insert(out, {redis.call('HGET', meta_prefix .. id, 'Result') or ''})
end
return out
"""
)

#: Puts back a job that no queue knows of: one the original service popped and then lost
#: (its bug 10.2.1-2), found by the notifier's start-up sweep. Returns "download",
#: "callback" or false. A dead letter (a job set aside as unreadable) is no orphan.
RESCUE_ORPHAN = (
    _ZADD_ANNOUNCED
    + """
local job, queue, inflight, callback_queue, callback_inflight = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local registry, dead_letters = KEYS[6], KEYS[7]
local id, now, aggr_id, wakeup_channel, callback_channel = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local state = redis.call('HMGET', job, 'ID', 'DownloadState', 'CallbackState')
if not state[1] or state[1] == '' then return false end
if redis.call('HEXISTS', dead_letters, id) == 1 then return false end
if state[3] == 'InProgress' and not redis.call('ZSCORE', callback_inflight, id)
    and not redis.call('ZSCORE', callback_queue, id) then
  redis.call('HSET', job, 'CallbackState', 'Pending')
  zadd_announced(callback_queue, now, id, callback_channel, aggr_id)
  return 'callback'
end
if (state[2] == 'Pending' or state[2] == 'InProgress') and not redis.call('ZSCORE', queue, id)
    and not redis.call('ZSCORE', inflight, id) then
  redis.call('HSET', job, 'DownloadState', 'Pending')
  redis.call('SADD', registry, aggr_id)
  zadd_announced(queue, now, id, wakeup_channel, aggr_id)
  return 'download'
end
return false
"""
)

#: Counts one job's end-to-end latency (creation to its end) in its minute's histogram:
#: field `<aggr>:<upper bound in seconds>` ("inf" above the last bound). Nothing without a
#: creation time (a job the original's processor claimed first).
_COUNT_LATENCY = (
    "local LATENCY_BOUNDS = {"
    + ", ".join(f"'{bound}'" for bound in keys.LATENCY_BOUNDS)
    + "}\n"
    + """
local function count_latency(key, aggr, created_at, now, ttl)
  local created = tonumber(created_at)
  if not created or not aggr or aggr == '' then return end
  local took = tonumber(now) - created
  local bound = '"""
    + keys.LATENCY_ABOVE
    + """'
  for _, b in ipairs(LATENCY_BOUNDS) do
    if took <= tonumber(b) then bound = b; break end
  end
  -- the first count of a field in this minute's key sets its expiry: once, not per job
  if redis.call('HINCRBY', key, aggr .. ':' .. bound, 1) == 1 then redis.call('EXPIRE', key, ttl) end
end
"""
)

#: The end-to-end latency of a job that finished without a callback (creation to stored, or to
#: Failed), counted as CALLBACK_DELIVERED counts a delivered one's. Returns nothing.
COUNT_JOB_LATENCY = (
    _COUNT_LATENCY
    + """
local jobmeta, latency = KEYS[1], KEYS[2]
local aggr_id, now, latency_ttl = ARGV[1], ARGV[2], ARGV[3]
count_latency(latency, aggr_id, redis.call('HGET', jobmeta, 'CreatedAt'), now, latency_ttl)
return 1
"""
)

#: The callback was delivered: the job's hash goes (as in the original, whose tools take a
#: delivered job's missing `job:<id>` for "done") and its file is scheduled for deletion at
#: its location. What GET /jobs/<id> shows of it stays in our own keys until the reaper
#: deletes them with the file: `jobmeta` gains `Delivered` (JSON of the job fields a view
#: needs, not its request's bulk) and `DeliveredAt`; meta, errors and options get `kept_ttl`
#: as a safety net. Its end-to-end latency is counted in `latency`. 1 done, 0 lease lost.
CALLBACK_DELIVERED = (
    _COUNT_LATENCY
    + """
local inflight, leases, job, jobmeta, joberrors = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local deletion_queue, jobopts, deletion_targets, latency = KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local id, token, delete_at, location = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local now, kept_ttl, latency_ttl = ARGV[5], ARGV[6], ARGV[7]
local KEPT = {'ID', 'URL', 'AggrID', 'MaxRetries', 'DownloadState', 'DownloadCount', 'DownloadMeta',
  'CallbackType', 'CallbackDst', 'CallbackURL', 'DownloadURL', 'CallbackCount', 'ResponseCode',
  'ImageSize', 'S3Bucket', 'S3Region'}
if redis.call('HGET', leases, id) ~= token then return 0 end
redis.call('ZREM', inflight, id)
redis.call('HDEL', leases, id)
local values = redis.call('HMGET', job, unpack(KEPT))
if values[1] then
  local snapshot = {}
  for i, name in ipairs(KEPT) do
    if values[i] then snapshot[name] = values[i] end
  end
  -- `Errors` and `Options` (set by FINISH, recovery and the first claim) say which of the
  -- job's other keys exist: only those are given the longer life
  local meta = redis.call('HMGET', jobmeta, 'CreatedAt', 'Errors', 'Options')
  redis.call('HSET', jobmeta, 'Delivered', cjson.encode(snapshot), 'DeliveredAt', now, 'UpdatedAt', now)
  redis.call('EXPIRE', jobmeta, kept_ttl)
  if meta[2] then redis.call('EXPIRE', joberrors, kept_ttl) end
  if meta[3] then redis.call('EXPIRE', jobopts, kept_ttl) end
  count_latency(latency, values[3], meta[1], now, latency_ttl)
else
  redis.call('DEL', jobmeta, joberrors, jobopts)
end
redis.call('DEL', job)
redis.call('ZADD', deletion_queue, delete_at, id)
redis.call('HSET', deletion_targets, id, location)
return 1
"""
)

#: A failed delivery: record it and either schedule the retry or leave the job Failed, its
#: hash, meta and file then kept until `delete_at` (the failed retention) and deleted together
#: by the reaper. 1 done, 0 lease lost, -1 job hash gone.
CALLBACK_UNDELIVERED = (
    _ARGV_FROM
    + """
local inflight, leases, job, callback_queue, jobmeta = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local deletion_queue, deletion_targets = KEYS[6], KEYS[7]
local id, token, retry_score, now, meta_ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local delete_at, location = ARGV[6], ARGV[7]
local fields = argv_from(8)  -- the job's field/value pairs
if redis.call('HGET', leases, id) ~= token then return 0 end
redis.call('ZREM', inflight, id)
redis.call('HDEL', leases, id)
if redis.call('EXISTS', job) == 0 then return -1 end
redis.call('HSET', job, unpack(fields))
if retry_score ~= '' then redis.call('ZADD', callback_queue, retry_score, id) end
if delete_at ~= '' then
  redis.call('ZADD', deletion_queue, delete_at, id)
  redis.call('HSET', deletion_targets, id, location)
end
redis.call('HSET', jobmeta, 'UpdatedAt', now)
redis.call('EXPIRE', jobmeta, meta_ttl)
return 1
"""
)

#: POST /retry/<id>: Failed -> Pending, announced to idle notifiers. Returns "OK", or the
#: current callback state when it is not Failed, or false if there is no such job.
RETRY_CALLBACK = (
    _ZADD_ANNOUNCED
    + """
local job, callback_queue, deletion_queue, deletion_targets = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id, now, channel = ARGV[1], ARGV[2], ARGV[3]
local state = redis.call('HGET', job, 'CallbackState')
local job_id = redis.call('HGET', job, 'ID')
if not job_id or job_id == '' then return false end
if state ~= 'Failed' then return state or '' end
-- no longer Failed: its retention ends, its file must outlive the new attempts
redis.call('ZREM', deletion_queue, id)
redis.call('HDEL', deletion_targets, id)
redis.call('HSET', job, 'CallbackMeta', '', 'CallbackCount', '0', 'CallbackState', 'Pending')
zadd_announced(callback_queue, now, id, channel, '')
return 'OK'
"""
)

#: Takes due file deletions and pushes them back to `retry score` at once, so a reaper that
#: dies mid-way or fails to delete a file retries later instead of dropping the entry (bug
#: 10.2.8). Returns {score of the next deletion due later, or '', ids...}.
CLAIM_DELETIONS = """
local deletion_queue = KEYS[1]
local now, wanted, retry_score = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local ids = redis.call('ZRANGEBYSCORE', deletion_queue, '-inf', now, 'LIMIT', 0, wanted)
if #ids == 0 then
  local head = redis.call('ZRANGE', deletion_queue, 0, 0, 'WITHSCORES')
  return {head[2] or ''}
end
local pushed = {}
for _, id in ipairs(ids) do
  table.insert(pushed, retry_score)
  table.insert(pushed, id)
end
redis.call('ZADD', deletion_queue, unpack(pushed))
table.insert(ids, 1, '')
return ids
"""
