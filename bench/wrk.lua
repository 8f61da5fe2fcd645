-- wrk script of the txgate benchmarks (bench/bench.py sets these through the environment):
--   BENCH_HEADER  request header to send (e.g. x-bitcoin-txid), empty for none
--   BENCH_VALUE   its value, the same on every request
--   BENCH_VALUES  a file of values, one per line, cycled request by request (e.g. fresh txids)
--   BENCH_PATH_PREFIX  with BENCH_VALUES: send the values as paths (prefix .. value) instead of a header
--   BENCH_COUNTER a prefix of hex digits: each request's header value is the prefix followed by a
--                 request counter in zero-padded decimal up to 64 characters (a new well-formed txid
--                 per request, as many as wanted, without a file; bench/scale.py's flood)
--   BENCH_LIMIT   stop after this many responses (fixed request count), 0 = run for -d
--   BENCH_EXTRA   more request headers, "name: value" pairs separated by tabs
-- done() prints one machine-readable line: requests, duration, latency percentiles, status counts.
local header = os.getenv("BENCH_HEADER") or ""
local value = os.getenv("BENCH_VALUE") or ""
local values_file = os.getenv("BENCH_VALUES") or ""
local path_prefix = os.getenv("BENCH_PATH_PREFIX") or ""
local limit = tonumber(os.getenv("BENCH_LIMIT") or "0") or 0
local counter_prefix = os.getenv("BENCH_COUNTER") or ""
local extra = {}
for pair in string.gmatch(os.getenv("BENCH_EXTRA") or "", "[^\t]+") do
  local k, v = string.match(pair, "^([^:]+):%s*(.*)$")
  if k then
    extra[k] = v
    wrk.headers[k] = v
  end
end

local values = {}
if values_file ~= "" then
  for line in io.lines(values_file) do
    if #line > 0 then values[#values + 1] = line end
  end
end

statuses = {}
responses = 0
local next_value = 0

if counter_prefix ~= "" then
  local counter_format = counter_prefix .. "%0" .. (64 - #counter_prefix) .. "d"
  function request()
    next_value = next_value + 1
    local h = { [header] = string.format(counter_format, next_value) }
    for k, x in pairs(extra) do h[k] = x end
    return wrk.format(nil, nil, h)
  end
elseif #values > 0 then
  -- Dynamic requests: a Lua call per request (only where the scenario needs it).
  function request()
    next_value = next_value + 1
    local v = values[((next_value - 1) % #values) + 1]
    if path_prefix ~= "" then return wrk.format(nil, path_prefix .. v) end
    local h = { [header] = v }
    for k, x in pairs(extra) do h[k] = x end
    return wrk.format(nil, nil, h)
  end
elseif header ~= "" then
  wrk.headers[header] = value
end

function response(status, headers, body)
  local key = tostring(status)
  statuses[key] = (statuses[key] or 0) + 1
  responses = responses + 1
  if limit > 0 and responses == limit then
    io.write("BENCH_STOP\n")
    io.flush()
    wrk.thread:stop()
  end
end

local threads = {}
function setup(thread)
  threads[#threads + 1] = thread
end

function done(summary, latency, requests)
  local merged = {}
  for _, t in ipairs(threads) do
    local s = t:get("statuses")
    if s then
      for k, n in pairs(s) do merged[k] = (merged[k] or 0) + n end
    end
  end
  local parts = {}
  for k, n in pairs(merged) do parts[#parts + 1] = k .. ":" .. n end
  local e = summary.errors
  io.write(string.format(
    "BENCH_RESULT requests=%d duration_us=%d p50_us=%d p90_us=%d p99_us=%d max_us=%d errors=%d statuses=%s\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.connect + e.read + e.write + e.timeout,
    table.concat(parts, ",")))
end
