"""The `specexp` Hydra app and everything around one run: the typed config schema (config.py)
and its check before any model loads (validate.py), turning config nodes into objects
(instantiate.py), the run (run.py), metrics.json (metrics_json.py), sweeps' callbacks and locks
(sweep_callbacks.py, gpu_pin.py), watching a generation (watch.py), the console (console.py),
decoding a recorded run again (rerun.py), where a run came from (provenance.py), and the build
commands that compose a pair's config before building (build_commands.py: specexp-distill,
specexp-eagle, specexp-datastore).

May import: every other layer. Nothing imports it."""
