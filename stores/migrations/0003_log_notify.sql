-- TGN replicas follow the events and session_ends tables. Every statement that adds rows to either notifies
-- the channel `recserve_log` with the namespace (this schema) as payload, at commit, so that a replica reads
-- the log when something was added rather than before every answer (stores/log_watch.py).
CREATE FUNCTION notify_log() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('recserve_log', TG_TABLE_SCHEMA);
    RETURN NULL;
END
$$;
CREATE TRIGGER events_notify_log AFTER INSERT ON events FOR EACH STATEMENT EXECUTE FUNCTION notify_log();
CREATE TRIGGER session_ends_notify_log AFTER INSERT ON session_ends FOR EACH STATEMENT EXECUTE FUNCTION notify_log();
