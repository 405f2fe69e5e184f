-- scripts/bench "relay" scenario, the same file for trioproxy and for Kamailio (app_lua, KEMI): every
-- request is relayed statefully to its Request-URI, with no other processing.
function ksr_request_route()
  KSR.tm.t_relay()
end
