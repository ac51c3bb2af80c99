//! `#[context]` keeps the struct as written: the user's derives apply to it.

use fluffy_flow::prelude::*;

#[context(prefix = "job.")]
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
struct Job {
    rows: u64,
    source: String,
}

fn main() {
    let job = Job {
        rows: 3,
        source: "s3://bucket".into(),
    };
    let copy = job.clone();
    assert_eq!(format!("{copy:?}"), "Job { rows: 3, source: \"s3://bucket\" }");
    let json = serde_json::to_string(&job).unwrap();
    assert_eq!(serde_json::from_str::<Job>(&json).unwrap(), job);
    let context = Context::new();
    job.store(&context);
    assert_eq!(Job::load(&context).unwrap(), copy);
    assert_eq!(context.rows().unwrap(), 3);
    assert_eq!(Job::default().rows, 0);
}
