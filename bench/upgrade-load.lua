-- bench/upgrade-load.lua: the wrk script of bench/upgrade-load.sh.
--
--   wrk ... -s bench/upgrade-load.lua URL -- TAG ANSWERED_FILE EXACT
--
-- POSTs a chat completion with the bench key. With EXACT=1 every request gets its own
-- path, URL/TAG-<thread>-<n>; the mock echoes the upstream path in `X-Req`, and each 2xx
-- response's id is written to ANSWERED_FILE at the end, so the script can match every
-- answered request with its usage record. With EXACT=0 the path is fixed (less Lua work
-- per request) and only wrk's counts are kept.

local key = os.getenv("BENCH_KEY") or "sk-missing"
local threads = {}
local next_thread = 0

function setup(thread)
  next_thread = next_thread + 1
  thread:set("tid", next_thread)
  table.insert(threads, thread)
end

-- Globals of each thread's Lua state: done() runs in another state and reads them with
-- thread:get().
local tag
local n = 0
answered = {}
answered_file = nil
exact = false

function init(args)
  tag = args[1] or "x"
  answered_file = args[2]
  exact = args[3] == "1"
  wrk.method = "POST"
  wrk.body = '{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}'
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. key
  if not exact then
    -- A static request: wrk formats it once per thread after init.
    wrk.path = wrk.path .. "/" .. tag
    request = nil
    response = nil
  end
end

function request()
  n = n + 1
  return wrk.format(nil, wrk.path .. "/" .. tag .. "-" .. tid .. "-" .. n)
end

function response(status, headers, body)
  if status >= 200 and status < 300 then
    local path = headers["X-Req"] or headers["x-req"] or ""
    answered[#answered + 1] = path:match("[^/]*$")
  end
end

function done(summary, latency, requests)
  for _, thread in ipairs(threads) do
    local path = thread:get("answered_file")
    if thread:get("exact") and path then
      local f = assert(io.open(path, "a"))
      for _, id in ipairs(thread:get("answered")) do
        f:write(id, "\n")
      end
      f:close()
    end
  end
end
