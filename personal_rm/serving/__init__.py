"""What the scoring service holds, Ray-free: its state as explicit artefacts (`state`) and the
durable feedback store (`store`). The Serve deployments in `serve_app/` are thin wrappers."""
