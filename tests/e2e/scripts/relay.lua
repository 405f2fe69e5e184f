-- Relay every request to its Request-URI: the least a route can do (hot-reload load, routing cost figure).
function ksr_request_route()
  KSR.tm.t_relay()
end
