//! The quickstart written with the macros: the compiler checks every transition.

use fluffy_flow::prelude::*;

struct Hello {
    name: String,
}

#[workflow(name = "hello_workflow")]
impl Hello {
    #[state(entry)]
    async fn process_data(&self, ctx: &Context) -> StateResult {
        ctx.set_state("greeting", format!("Hello, {}!", self.name));
        next!(format_output)
    }

    #[state]
    async fn format_output(&self, ctx: &Context) -> StateResult {
        let greeting: String = ctx.get_state("greeting")?;
        ctx.set_state("output", format!("Result: {greeting}"));
        end!()
    }
}

#[tokio::main]
async fn main() -> Result<(), FlowError> {
    let report = Hello {
        name: "World".into(),
    }
    .agent()
    .run()
    .await?;
    println!("{}", report.context.get_state::<String>("output")?);
    println!("{}", Hello::GRAPH.to_mermaid());
    Ok(())
}
