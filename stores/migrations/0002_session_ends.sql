-- Sessions ended explicitly (DELETE /v1/sessions/...). Sessions otherwise end by inactivity, which needs
-- no row; with these rows every TGN replica rebuilds the same session state from the database.
CREATE TABLE session_ends (
    end_id      bigserial PRIMARY KEY,
    session_key text NOT NULL,  -- user_id, or "session:<session_id>" for an anonymous visitor
    ended_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX session_ends_ended_at_idx ON session_ends (ended_at);
