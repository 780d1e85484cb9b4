"""`bucketrun ui`: a read-only dashboard of the bucket's jobs and host agents, served by Starlette under uvicorn.
Only handlers/cli/ui.py imports its server, lazily, so the Lambda and the rest of the CLI never load the ui extra;
its read cache is handlers/jobcache.py, which `bucketrun top` shares."""
