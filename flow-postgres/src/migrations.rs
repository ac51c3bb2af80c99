//! The schema, as numbered migrations embedded in the binary (`migrations/*.sql`), applied
//! in order by [`crate::PgBackend::migrate`].

/// (version, name, SQL), in the order they apply.
pub(crate) const MIGRATIONS: [(i32, &str, &str); 7] = [
    (
        1,
        "checkpoints",
        include_str!("../migrations/0001_checkpoints.sql"),
    ),
    (2, "runs", include_str!("../migrations/0002_runs.sql")),
    (
        3,
        "coordination",
        include_str!("../migrations/0003_coordination.sql"),
    ),
    (4, "tasks", include_str!("../migrations/0004_tasks.sql")),
    (5, "lapses", include_str!("../migrations/0005_lapses.sql")),
    (
        6,
        "queue order",
        include_str!("../migrations/0006_queue_order.sql"),
    ),
    (
        7,
        "cancel requests",
        include_str!("../migrations/0007_cancel_requests.sql"),
    ),
];
