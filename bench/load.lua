-- wrk script for bench/serve.py and bench/bulk.py: POST one text per request.
-- Arguments (after `--`): mode (cold | cached | search), a run tag, the collection name.
-- cold and search send a text no request has sent before; cached cycles through 64 texts that
-- the benchmark embedded before the clock started. At the end one line of JSON is printed.
local templates = {
  "The train to the airport leaves every %d minutes.",
  "Der Zug zum Flughafen fährt alle %d Minuten ab.",
  "Le train pour l'aéroport part toutes les %d minutes.",
  "El tren al aeropuerto sale cada %d minutos.",
  "Поезд в аэропорт отправляется каждые %d минут.",
  "去机场的火车每%d分钟发一班。",
}
local threads = {}
local counter = 0

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  mode, tag, collection = args[1], args[2], args[3]
end

local function sentence(label, n)
  -- The same text as bench/serve.py's sentence(label, n).
  return string.format(templates[(n % #templates) + 1], n) .. " (" .. label .. ")"
end

request = function()
  counter = counter + 1
  local body
  if mode == "cached" then
    body = '{"texts":["' .. sentence("cached " .. tag, counter % 64) .. '"]}'
    return wrk.format("POST", "/embed", {["Content-Type"] = "application/json"}, body)
  end
  local label = mode .. " " .. tag .. " " .. id
  if mode == "search" then
    body = '{"collection":"' .. collection .. '","k":10,"query":"' .. sentence(label, counter) .. '"}'
    return wrk.format("POST", "/search", {["Content-Type"] = "application/json"}, body)
  end
  body = '{"texts":["' .. sentence(label, counter) .. '"]}'
  return wrk.format("POST", "/embed", {["Content-Type"] = "application/json"}, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '@@WRK@@ {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"errors":%d,"status_errors":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
