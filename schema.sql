-- Applied on every shard primary by `shardctl up`; must be idempotent.
CREATE TABLE IF NOT EXISTS users (
    id          uuid PRIMARY KEY,
    first_name  text,
    last_name   text,
    email       text,
    created_at  timestamptz DEFAULT now(),
    updated_at  timestamptz
);
