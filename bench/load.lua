-- wrk script for bench/serve.py, bench/bulk.py and bench/peer_servers.py.
-- Arguments (after `--`): mode (cold | cached | search | openai), a run tag, then
--   cold, cached, search: the collection name; one text per request;
--   openai: path, model ("-" to leave it out), texts per request, prefix ("-" for none; a server
--   that does not add e5's "query: " gets it in the text), input_type ("-" to leave it out).
-- cold, search and openai send texts no request has sent before; cached cycles through 64 texts
-- that the benchmark embedded before the clock started. At the end one line of JSON is printed.
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
  if mode == "openai" then
    path, model, texts, prefix, input_type = args[3], args[4], tonumber(args[5]), args[6], args[7]
    if prefix == "-" then prefix = "" end
  end
end

local function sentence(label, n)
  -- The same text as bench/serve.py's sentence(label, n).
  return string.format(templates[(n % #templates) + 1], n) .. " (" .. label .. ")"
end

-- An OpenAI-style embeddings request of `texts` new texts: the same body for every server.
local function openai_request(label)
  local parts = {}
  for i = 1, texts do
    counter = counter + 1
    parts[i] = '"' .. prefix .. sentence(label, counter) .. '"'
  end
  local body = '{"input":[' .. table.concat(parts, ",") .. ']'
  if model ~= "-" then body = body .. ',"model":"' .. model .. '"' end
  if input_type ~= "-" then body = body .. ',"input_type":"' .. input_type .. '"' end
  return wrk.format("POST", path, {["Content-Type"] = "application/json"}, body .. "}")
end

request = function()
  if mode == "openai" then return openai_request(tag .. " " .. id) end
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
