-- Coordination shared by every process: semaphores (a mutex is one of 1 permit, a lease one
-- whose permits expire) and token-bucket rate limits. Each acquisition is one call of a
-- function below: one round trip.

CREATE TABLE fluffy_semaphores (
    name    text    PRIMARY KEY,
    permits integer NOT NULL CHECK (permits > 0)
);

CREATE TABLE fluffy_permits (
    name       text        NOT NULL REFERENCES fluffy_semaphores (name) ON DELETE CASCADE,
    -- One acquisition's own id.
    holder     text        NOT NULL,
    units      integer     NOT NULL CHECK (units > 0),
    -- The fencing token: grows with every acquisition of any semaphore.
    token      bigserial   NOT NULL,
    -- A holder that stopped renewing (a crashed process) loses its permits then.
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (name, holder)
);

-- Takes `p_units` permits of `p_name` for `p_holder` until `p_ttl_ms` from now, if they fit;
-- returns the fencing token, or NULL when they do not fit now. The semaphore's row is locked
-- first and the permits counted after (a new snapshot per statement in a volatile function),
-- so concurrent acquisitions never see a stale count.
CREATE FUNCTION fluffy_acquire(p_name text, p_holder text, p_units integer, p_ttl_ms bigint)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_permits integer;
    v_held bigint;
    v_token bigint;
BEGIN
    SELECT permits INTO v_permits FROM fluffy_semaphores WHERE name = p_name FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'there is no semaphore `%`: create it with PgSemaphore::create', p_name
            USING ERRCODE = 'no_data_found';
    END IF;
    IF p_units < 1 OR p_units > v_permits THEN
        RAISE EXCEPTION 'semaphore `%` has % permits: % can never be taken; ask for 1 to %',
            p_name, v_permits, p_units, v_permits USING ERRCODE = 'invalid_parameter_value';
    END IF;
    DELETE FROM fluffy_permits WHERE name = p_name AND expires_at < clock_timestamp();
    SELECT coalesce(sum(units), 0) INTO v_held FROM fluffy_permits WHERE name = p_name;
    IF v_held + p_units > v_permits THEN
        RETURN NULL;
    END IF;
    INSERT INTO fluffy_permits (name, holder, units, expires_at)
    VALUES (p_name, p_holder, p_units, clock_timestamp() + p_ttl_ms * interval '1 millisecond')
    RETURNING token INTO v_token;
    RETURN v_token;
END $$;

CREATE TABLE fluffy_rate_limits (
    name       text             PRIMARY KEY,
    -- Tokens added per second, and the most the bucket holds.
    rate       double precision NOT NULL CHECK (rate > 0),
    burst      double precision NOT NULL CHECK (burst >= 1),
    tokens     double precision NOT NULL,
    updated_at timestamptz      NOT NULL DEFAULT clock_timestamp()
);

-- Takes `p_cost` tokens of the bucket `p_name` if it holds them now: returns 0, or the seconds
-- to wait until it will (nothing is taken then).
CREATE FUNCTION fluffy_take_tokens(p_name text, p_cost double precision)
RETURNS double precision LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := clock_timestamp();
    v_bucket fluffy_rate_limits%ROWTYPE;
    v_tokens double precision;
BEGIN
    SELECT * INTO v_bucket FROM fluffy_rate_limits WHERE name = p_name FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'there is no rate limit `%`: create it with PgRateLimit::create', p_name
            USING ERRCODE = 'no_data_found';
    END IF;
    IF NOT (p_cost > 0 AND p_cost <= v_bucket.burst) THEN
        RAISE EXCEPTION 'rate limit `%` holds at most % tokens: a cost of % can never be taken; ask for more than 0 and at most the burst',
            p_name, v_bucket.burst, p_cost USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_tokens := least(v_bucket.burst,
        v_bucket.tokens + greatest(0, extract(epoch FROM v_now - v_bucket.updated_at)) * v_bucket.rate);
    IF v_tokens >= p_cost THEN
        UPDATE fluffy_rate_limits SET tokens = v_tokens - p_cost, updated_at = v_now
        WHERE name = p_name;
        RETURN 0;
    END IF;
    RETURN (p_cost - v_tokens) / v_bucket.rate;
END $$;
