-- A registrar and proxy facing the internet (the route of scripts/soak.py).
--   * flood detection: every request counts against its source (KSR.pike, [pike] thresholds); a source
--     over the rate is blocked (for [pike] block_time, refused at the ingress before parsing). Sources in
--     [pike] trusted are never counted. [pike] auth_failures blocks password guessers too.
--   * REGISTER needs digest authentication against the operator database (trioproxy run --db ...,
--     trioproxy user add); the realm is the From domain.
--   * requests for our domain go to the registered contacts (404 when none); we are not an open relay.
-- Needs: trioproxy run --db sqlite:///PATH --script examples/routes/public.lua

function ksr_request_route()
  KSR.force_rport()
  if KSR.pike.pike_check_req() < 0 then
    KSR.x.drop()
  end
  if KSR.maxfwd.process_maxfwd(10) < 0 then
    KSR.sl.sl_send_reply(483, "Too Many Hops")
    KSR.x.exit()
  end
  if KSR.sanity.sanity_check(17895, 7) < 0 then
    KSR.x.exit()
  end

  if KSR.is_CANCEL() then
    if KSR.tm.t_check_trans() > 0 then
      KSR.tm.t_relay()
    end
    KSR.x.exit()
  end

  if KSR.siputils.has_totag() > 0 then
    if KSR.rr.loose_route() > 0 then
      KSR.tm.t_relay()
    elseif KSR.is_ACK() then
      if KSR.tm.t_check_trans() > 0 then
        KSR.tm.t_relay()
      end
    else
      KSR.sl.sl_send_reply(404, "Not here")
    end
    KSR.x.exit()
  end

  if KSR.is_OPTIONS() and KSR.is_myself_ruri() and KSR.corex.has_ruri_user() < 0 then
    KSR.sl.sl_send_reply(200, "Keepalive")
    KSR.x.exit()
  end

  if KSR.is_REGISTER() then
    if KSR.auth_db.auth_check(KSR.kx.gete_fhost(), "subscriber", 1) < 0 then
      KSR.auth.auth_challenge(KSR.kx.gete_fhost(), 0)
      KSR.x.exit()
    end
    if KSR.registrar.save("location", 0) < 0 then
      KSR.sl.sl_reply_error()
    end
    KSR.x.exit()
  end

  if not KSR.is_myself_ruri() then
    KSR.sl.sl_send_reply(403, "Not relaying")
    KSR.x.exit()
  end
  if KSR.registrar.lookup("location") < 0 then
    KSR.sl.sl_send_reply(404, "Not Found")
    KSR.x.exit()
  end
  if KSR.is_INVITE() then
    KSR.rr.record_route()
  end
  if KSR.tm.t_relay() < 0 then
    KSR.sl.sl_reply_error()
  end
end
