"""End-to-end tests: trioproxy between real SIPp peers over loopback."""
