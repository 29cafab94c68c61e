-- Catalogue, users and the event log. Runs inside the dataset's schema (search_path).
CREATE TABLE items (
    item_id     text PRIMARY KEY,
    title       text,
    description text,
    provider    text,
    category    text,
    badges      text[] NOT NULL DEFAULT '{}',
    attrs       jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX items_provider_idx ON items (provider);
CREATE INDEX items_category_idx ON items (category);

CREATE TABLE users (
    user_id    text PRIMARY KEY,
    device     text,
    attrs      jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE events (
    event_id        bigserial PRIMARY KEY,
    user_id         text,
    item_id         text NOT NULL,
    session_id      text,
    event_type      text NOT NULL CHECK (event_type IN
                    ('impression', 'click', 'play', 'rating', 'purchase', 'like', 'add_to_cart')),
    value           double precision,
    device          text,
    ts              timestamptz NOT NULL,
    idempotency_key text UNIQUE,
    -- An anonymous event still belongs to a session.
    CHECK (user_id IS NOT NULL OR session_id IS NOT NULL),
    CHECK (event_type <> 'rating' OR value BETWEEN 1 AND 5),
    CHECK (event_type <> 'play' OR value IS NULL OR value >= 0)
);
CREATE INDEX events_ts_idx ON events (ts);
CREATE INDEX events_user_ts_idx ON events (user_id, ts);

-- What was loaded, and the published split to keep (if any).
CREATE TABLE dataset_meta (
    key        text PRIMARY KEY,
    value      jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
