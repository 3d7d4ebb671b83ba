-- The W3C traceparent of the span that enqueued a job, so the job's run joins that trace.
ALTER TABLE forge_jobs ADD COLUMN trace_context text;

-- How long this node's previous heartbeat took: a node-health metric for the monitor.
ALTER TABLE forge_nodes ADD COLUMN heartbeat_latency_ms real;
