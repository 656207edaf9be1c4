"""Background admin jobs (bulk ingest, bitext mining) that survive a restart.

Why files and one worker thread: a job may run for hours, longer than any request, and the
service may be restarted in the middle. Each job is a JSON file under ``<home>/jobs`` written
atomically, so after a crash or a restart every job is found again in a consistent state. Jobs
run one at a time, in submission order, on a dedicated thread: ingest saturates every core
already, and the event loop must never wait for a forward pass or an fsync.

Ingest is resumable by design (the collection commits, with each chunk, the byte offset reached
and the source's document and malformed-line counts), so a job interrupted by a restart is simply
queued again and continues after its last committed chunk; its counts are the committed ones
minus those at its first run, exact without re-reading the file.
"""
