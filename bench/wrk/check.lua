-- wrk -s bench/wrk/check.lua: POST /v1/check for subjects drawn uniformly
-- from 10,000 users. QUOTAD_KEY (env) is the bearer key.
local key = os.getenv("QUOTAD_KEY") or "dev-admin-key"
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. key
request = function()
  return wrk.format(nil, "/v1/check", nil, '{"subject":"user:b' .. math.random(1, 10000) .. '","amount":1}')
end
