//! The quickstart: two states, one context value, one transition.

use fluffy_flow::prelude::*;

async fn process_data(ctx: Context) -> StateResult {
    ctx.set_state("greeting", "Hello, World!".to_string());
    Ok(Next::to("format_output"))
}

async fn format_output(ctx: Context) -> StateResult {
    let greeting: String = ctx.get_state("greeting")?;
    ctx.set_state("output", format!("Result: {greeting}"));
    Ok(Next::End)
}

#[tokio::main]
async fn main() -> Result<(), FlowError> {
    let mut agent = Agent::new("hello_workflow");
    agent.add_state("process_data", process_data);
    agent.add_state("format_output", format_output);

    let report = agent.run().await?;
    println!("{}", report.context.get_state::<String>("output")?);
    println!(
        "status: {:?}, states run: {}",
        report.status, report.transitions
    );
    Ok(())
}
