//! The `fluffy` command line (see `flow_web::cli`).

fn main() -> std::process::ExitCode {
    flow_web::cli::main()
}
