-- wrk script for bench/peer_servers.py: POST OpenAI-style embedding requests, the same bodies to
-- every server. Arguments (after `--`): path, model ("-" to leave it out), texts per request,
-- prefix ("-" for none; a server that does not add e5's "query: " gets it in the text), run tag,
-- input_type ("-" to leave it out; dapsearch's field for the query prefix).
-- Every text is new, so no server answers from a cache. At the end one line of JSON is printed.
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
  path, model, texts, prefix, tag, input_type = args[1], args[2], tonumber(args[3]), args[4], args[5], args[6]
  if prefix == "-" then prefix = "" end
end

request = function()
  local parts = {}
  for i = 1, texts do
    counter = counter + 1
    local text = string.format(templates[(counter % #templates) + 1], counter)
    parts[i] = '"' .. prefix .. text .. " (" .. tag .. " " .. id .. ")" .. '"'
  end
  local body = '{"input":[' .. table.concat(parts, ",") .. ']'
  if model ~= "-" then body = body .. ',"model":"' .. model .. '"' end
  if input_type ~= "-" then body = body .. ',"input_type":"' .. input_type .. '"' end
  body = body .. "}"
  return wrk.format("POST", path, {["Content-Type"] = "application/json"}, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '@@WRK@@ {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"errors":%d,"status_errors":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
