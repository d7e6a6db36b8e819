-- wrk -s bench/wrk/consume.lua: POST /v1/consume (record, amount 1) for
-- subjects drawn uniformly from 10,000 users.
local key = os.getenv("QUOTAD_KEY") or "dev-admin-key"
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. key
request = function()
  return wrk.format(nil, "/v1/consume", nil, '{"subject":"user:b' .. math.random(1, 10000) .. '","amount":1}')
end
