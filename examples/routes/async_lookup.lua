-- A non-blocking lookup: while the location service (or the back-off sleep) is waited for, the proxy
-- keeps routing other requests; this route keeps its locals when it resumes.

function ksr_request_route()
  if not KSR.is_INVITE() then
    KSR.tm.t_relay()
    return
  end
  local started = os.clock()
  local tries = 0
  local rc = KSR.registrar.lookup("location")
  while rc < 0 and tries < 3 do
    -- the callee may be re-registering: wait a little and look again
    tries = tries + 1
    KSR.x.sleep(0.5 * tries)
    rc = KSR.registrar.lookup("location")
  end
  KSR.pv.seti("$var(tries)", tries)
  if rc < 0 then
    KSR.sl.sl_send_reply(404, "Not Found")
    return
  end
  KSR.hdr.append("X-Lookup-Tries: " .. tries .. "\r\n")
  KSR.tm.t_relay()
end
