"""The Lua scripts that make every state change of a job atomic.

Each script takes its keys as KEYS (built by `keys`), never builds one itself, and is safe
to run twice: a claim is fenced by a lease token, so a late or duplicated writer changes
nothing. Lease expiries are set and compared on Redis's clock, so processes whose clocks
disagree cannot shorten each other's leases. Field names are the original's (`job:<id>`
hashes stay readable by it).
"""

from __future__ import annotations

#: Redis's own clock, in Unix seconds. Every lease expiry is set and compared with it.
_REDIS_NOW = """
local function redis_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
"""

#: KEYS: job, aggr, queue, jobmeta, jobopts. ARGV: score, limit, proxy, meta ttl, aggr id,
#: job id, wake-up channel, encoded options ("" = none), then job field/value pairs.
#: Returns 0 when the id is taken (the caller draws another). An empty queue that gets a
#: job is announced on the wake-up channel.
#: Creating the aggregation and queueing the job in one step closes the original's race
#: with an idle aggregation's deletion (bug 10.2.5).
ENQUEUE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('HSET', KEYS[2], 'ID', ARGV[5], 'Limit', ARGV[2], 'Proxy', ARGV[3], 'ExpiresAt', '')
end
local was_empty = redis.call('EXISTS', KEYS[3]) == 0
redis.call('HSET', KEYS[1], unpack(ARGV, 9))
if ARGV[8] ~= '' then redis.call('SET', KEYS[5], ARGV[8]) end
redis.call('ZADD', KEYS[3], ARGV[1], ARGV[6])
if was_empty then redis.call('PUBLISH', ARGV[7], ARGV[5]) end
redis.call('HSET', KEYS[4], 'CreatedAt', ARGV[1], 'UpdatedAt', ARGV[1])
redis.call('EXPIRE', KEYS[4], ARGV[4])
return 1
"""

#: KEYS: queue, inflight, leases, aggr, paused set. ARGV: now, lease seconds, wanted, token,
#: default limit, aggregation id. Moves up to `wanted` ready ids into inflight, never past
#: the aggregation's limit counted over every lease of every process. Returns
#: {status, ids...}; status is "ok", "full", "paused", "empty" or the score of the next job
#: that will become ready.
CLAIM = (
    _REDIS_NOW
    + """
if redis.call('SISMEMBER', KEYS[5], ARGV[6]) == 1 then return {'paused'} end
local limit = tonumber(redis.call('HGET', KEYS[4], 'Limit'))
if not limit or limit <= 0 then limit = tonumber(ARGV[5]) end
local room = limit - redis.call('ZCARD', KEYS[2])
if room <= 0 then return {'full'} end
local n = math.min(room, tonumber(ARGV[3]))
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, n)
if #ids == 0 then
  local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  if #head == 0 then return {'empty'} end
  return {head[2]}
end
local expiry = redis_now() + tonumber(ARGV[2])
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZADD', KEYS[2], expiry, id)
  redis.call('HSET', KEYS[3], id, ARGV[4])
end
table.insert(ids, 1, 'ok')
return ids
"""
)

#: KEYS: aggr, then job, jobmeta and jobopts of each claimed id. ARGV: now, meta ttl.
#: Marks the claimed jobs InProgress and returns {aggr hash, then per job: its hash and
#: {options}} (flat field/value lists; an empty hash for a job whose hash is gone, which is
#: left uncreated).
START_DOWNLOADS = """
local out = {redis.call('HGETALL', KEYS[1])}
for i = 2, #KEYS, 3 do
  local id = redis.call('HGET', KEYS[i], 'ID')
  if id and id ~= '' then
    redis.call('HSET', KEYS[i], 'DownloadState', 'InProgress')
    redis.call('HSET', KEYS[i + 1], 'StartedAt', ARGV[1], 'UpdatedAt', ARGV[1])
    redis.call('EXPIRE', KEYS[i + 1], ARGV[2])
  end
  table.insert(out, redis.call('HGETALL', KEYS[i]))
  table.insert(out, {redis.call('GET', KEYS[i + 2]) or ''})
end
return out
"""

#: KEYS: inflight, leases. ARGV: lease seconds, token, ids... Extends the leases still held
#: by `token`; returns the ids whose lease was lost (recovered by someone else).
RENEW = (
    _REDIS_NOW
    + """
local lost = {}
local expiry = redis_now() + tonumber(ARGV[1])
for i = 3, #ARGV do
  local id = ARGV[i]
  if redis.call('HGET', KEYS[2], id) == ARGV[2] then
    redis.call('ZADD', KEYS[1], 'XX', expiry, id)
  else
    table.insert(lost, id)
  end
end
return lost
"""
)

#: The dashboard's count of one finished attempt ("ok", "failed", "retried"; "" counts
#: nothing) in its minute, and a failure record in the capped list of recent failures.
_COUNT_ATTEMPT = """
local function count_attempt(minute, failures, kind, aggr, failure, ttl, kept)
  if kind ~= '' then
    redis.call('HINCRBY', minute, kind, 1)
    redis.call('HINCRBY', minute, aggr .. ':' .. kind, 1)
    redis.call('EXPIRE', minute, ttl)
  end
  if failure ~= '' then
    redis.call('LPUSH', failures, failure)
    redis.call('LTRIM', failures, 0, tonumber(kept) - 1)
  end
end
"""

#: KEYS: inflight, leases, job, target queue, jobmeta, joberrors, deletion targets,
#: this minute's throughput hash, recent failures.
#: ARGV: id, token, target score ("" = none), now, error text ("" = none), errors kept,
#: meta ttl, finished ("1"/"0"), deletion target ("" = none), download result ("" = none),
#: dashboard kind ("ok"/"failed"/"retried", "" = not counted), aggregation id, failure
#: record ("" = none), throughput ttl, failures kept, then job field/value pairs.
#: Ends an attempt: writes the outcome and moves the id on (back to its queue, to the
#: callback queue, or -- a finished job without callback -- to the deletion queue with
#: its file's location), and counts it for the dashboard, only if the caller still holds
#: the lease. 1 done, 0 lease lost, -1 the job hash vanished meanwhile.
FINISH = (
    _COUNT_ATTEMPT
    + """
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
if redis.call('EXISTS', KEYS[3]) == 0 then return -1 end
if #ARGV >= 17 then redis.call('HSET', KEYS[3], unpack(ARGV, 16)) end
if ARGV[10] ~= '' then redis.call('HSET', KEYS[5], 'Result', ARGV[10]) end
if ARGV[3] ~= '' then redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1]) end
if ARGV[9] ~= '' then redis.call('HSET', KEYS[7], ARGV[1], ARGV[9]) end
redis.call('HSET', KEYS[5], 'UpdatedAt', ARGV[4])
if ARGV[8] == '1' then redis.call('HSET', KEYS[5], 'FinishedAt', ARGV[4]) end
redis.call('EXPIRE', KEYS[5], ARGV[7])
if ARGV[5] ~= '' then
  redis.call('RPUSH', KEYS[6], ARGV[5])
  redis.call('LTRIM', KEYS[6], -tonumber(ARGV[6]), -1)
  redis.call('EXPIRE', KEYS[6], ARGV[7])
end
count_attempt(KEYS[8], KEYS[9], ARGV[11], ARGV[12], ARGV[13], ARGV[14], ARGV[15])
return 1
"""
)

#: KEYS: the minute's throughput hash, recent failures. ARGV: kind, aggregation id, failure
#: record ("" = none), throughput ttl, failures kept. What FINISH counts, on its own (for
#: tools and tests that write the dashboard's history).
RECORD_ATTEMPT = (
    _COUNT_ATTEMPT
    + """
count_attempt(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])
return 1
"""
)

#: KEYS: inflight, leases, queue, job, jobmeta, callback queue, joberrors.
#: ARGV: id, now, crash tolerance, default max retries, error text, meta ttl, errors kept.
#: Gives back the job of a lease that expired on Redis's clock (its process died or hung). After
#: `tolerance` such crashes each further one uses up an attempt, and a job out of attempts
#: fails, so a job that kills its worker cannot loop forever. 1 requeued, 2 failed,
#: 0 lease not expired (or already recovered), -1 job hash gone.
RECOVER = (
    _REDIS_NOW
    + """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) > redis_now() then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
if redis.call('EXISTS', KEYS[4]) == 0 then return -1 end
local crashes = redis.call('HINCRBY', KEYS[5], 'Crashes', 1)
redis.call('HSET', KEYS[5], 'UpdatedAt', ARGV[2])
redis.call('EXPIRE', KEYS[5], ARGV[6])
if crashes > tonumber(ARGV[3]) then
  local count = redis.call('HINCRBY', KEYS[4], 'DownloadCount', 1)
  local maxr = tonumber(redis.call('HGET', KEYS[4], 'MaxRetries')) or tonumber(ARGV[4])
  redis.call('RPUSH', KEYS[7], ARGV[5])
  redis.call('LTRIM', KEYS[7], -tonumber(ARGV[7]), -1)
  redis.call('EXPIRE', KEYS[7], ARGV[6])
  if count > maxr then
    redis.call('HSET', KEYS[4], 'DownloadState', 'Failed', 'DownloadMeta', ARGV[5])
    redis.call('HSET', KEYS[5], 'FinishedAt', ARGV[2])
    local url = redis.call('HGET', KEYS[4], 'CallbackURL')
    local dst = redis.call('HGET', KEYS[4], 'CallbackDst')
    if (url and url ~= '') or (dst and dst ~= '') then
      redis.call('HSET', KEYS[4], 'CallbackState', 'Pending')
      redis.call('ZADD', KEYS[6], ARGV[2], ARGV[1])
    end
    return 2
  end
end
redis.call('HSET', KEYS[4], 'DownloadState', 'Pending')
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
return 1
"""
)

#: KEYS: callback queue, callback inflight, callback leases.
#: ARGV: now, lease seconds, wanted, token. Returns the claimed ids.
CLAIM_CALLBACKS = (
    _REDIS_NOW
    + """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local expiry = redis_now() + tonumber(ARGV[2])
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZADD', KEYS[2], expiry, id)
  redis.call('HSET', KEYS[3], id, ARGV[4])
end
return ids
"""
)

#: KEYS: job, jobopts, jobmeta. Counts a callback attempt and marks it InProgress; returns
#: {hash, {options}, {download result}}, or nothing when the job is gone (never creates a
#: hash for a vanished job).
START_CALLBACK = """
local id = redis.call('HGET', KEYS[1], 'ID')
if not id or id == '' then return false end
redis.call('HINCRBY', KEYS[1], 'CallbackCount', 1)
redis.call('HSET', KEYS[1], 'CallbackState', 'InProgress', 'CallbackMeta', '')
return {redis.call('HGETALL', KEYS[1]), {redis.call('GET', KEYS[2]) or ''},
        {redis.call('HGET', KEYS[3], 'Result') or ''}}
"""

#: KEYS: job, queue, inflight, callback queue, callback inflight. ARGV: id, now.
#: Puts back a job that no queue knows of: one the original service popped and then lost
#: (its bug 10.2.1-2), found by the notifier's start-up sweep. Returns "download",
#: "callback" or false.
RESCUE_ORPHAN = """
local state = redis.call('HMGET', KEYS[1], 'ID', 'DownloadState', 'CallbackState')
if not state[1] or state[1] == '' then return false end
if state[3] == 'InProgress' and not redis.call('ZSCORE', KEYS[5], ARGV[1])
    and not redis.call('ZSCORE', KEYS[4], ARGV[1]) then
  redis.call('HSET', KEYS[1], 'CallbackState', 'Pending')
  redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1])
  return 'callback'
end
if (state[2] == 'Pending' or state[2] == 'InProgress') and not redis.call('ZSCORE', KEYS[2], ARGV[1])
    and not redis.call('ZSCORE', KEYS[3], ARGV[1]) then
  redis.call('HSET', KEYS[1], 'DownloadState', 'Pending')
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
  return 'download'
end
return false
"""

#: KEYS: callback inflight, callback leases, job, jobmeta, joberrors, deletion queue,
#: jobopts, deletion targets. ARGV: id, token, deletion score, file location.
#: The callback was delivered: the job's hash and ours go, its file is scheduled for
#: deletion at its location. 1 done, 0 lease lost.
CALLBACK_DELIVERED = """
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[3], KEYS[4], KEYS[5], KEYS[7])
redis.call('ZADD', KEYS[6], ARGV[3], ARGV[1])
redis.call('HSET', KEYS[8], ARGV[1], ARGV[4])
return 1
"""

#: KEYS: callback inflight, callback leases, job, callback queue, jobmeta.
#: ARGV: id, token, retry score ("" = no retry), now, meta ttl, then job field/value pairs.
#: A failed delivery: record it and either schedule the retry or leave the job Failed.
CALLBACK_UNDELIVERED = """
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
if redis.call('EXISTS', KEYS[3]) == 0 then return -1 end
redis.call('HSET', KEYS[3], unpack(ARGV, 6))
if ARGV[3] ~= '' then redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1]) end
redis.call('HSET', KEYS[5], 'UpdatedAt', ARGV[4])
redis.call('EXPIRE', KEYS[5], ARGV[5])
return 1
"""

#: KEYS: callback inflight, callback leases, job, callback queue. ARGV: id, now.
#: A callback lease expired on Redis's clock (notifier died mid-delivery) goes back to the
#: queue: delivery is at least once.
RECOVER_CALLBACK = (
    _REDIS_NOW
    + """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) > redis_now() then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
if redis.call('EXISTS', KEYS[3]) == 0 then return -1 end
redis.call('HSET', KEYS[3], 'CallbackState', 'Pending')
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1])
return 1
"""
)

#: KEYS: job, callback queue. ARGV: id, now. POST /retry/<id>: Failed -> Pending.
#: Returns "OK", or the current callback state when it is not Failed, or false if no job.
RETRY_CALLBACK = """
local state = redis.call('HGET', KEYS[1], 'CallbackState')
local id = redis.call('HGET', KEYS[1], 'ID')
if not id or id == '' then return false end
if state ~= 'Failed' then return state or '' end
redis.call('HSET', KEYS[1], 'CallbackMeta', '', 'CallbackCount', '0', 'CallbackState', 'Pending')
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return 'OK'
"""

#: KEYS: deletion queue. ARGV: now, wanted, retry score. Takes due file deletions and
#: pushes them back to `retry score` at once, so a reaper that dies mid-way or fails to
#: delete a file retries later instead of dropping the entry (bug 10.2.8).
CLAIM_DELETIONS = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], ARGV[3], id) end
return ids
"""

#: KEYS: queue, inflight, aggr, managed set. ARGV: aggregation id. Deletes the aggregation
#: hash of an aggregation with no queued and no claimed job, so a later request may set a
#: new limit (as the original) -- unless the operator manages it (its spec is the truth).
DELETE_IDLE_AGGREGATION = """
if redis.call('SISMEMBER', KEYS[4], ARGV[1]) == 1 then return 0 end
if redis.call('ZCARD', KEYS[1]) > 0 or redis.call('ZCARD', KEYS[2]) > 0 then return 0 end
return redis.call('DEL', KEYS[3])
"""
