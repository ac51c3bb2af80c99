//! The agent-wide `on_error` handler: states without a handler of their own go there when they
//! have failed for good; a state's own handler wins; the handler has none itself (its failure
//! fails the run); an unknown handler is refused; the macro form.

use fluffy_flow::prelude::*;

/// `ingest → transform → publish`, where `transform` fails; `audit` (after `publish`) fails
/// too and has a handler of its own, `quarantine`.
fn pipeline(audit_fails: bool) -> Agent {
    let mut agent = Agent::new("etl");
    agent
        .add_state("ingest", |_ctx: Context| async {
            Ok(Next::to("transform"))
        })
        .successors(["transform"]);
    agent
        .add_state("transform", |ctx: Context| async move {
            if ctx.get_state_or::<bool>("fixed", false)? {
                return Ok(Next::to("audit"));
            }
            Err("bad row 17".into())
        })
        .successors(["audit"]);
    agent
        .add_state("audit", move |_ctx: Context| async move {
            if audit_fails {
                return Err("audit log full".into());
            }
            Ok(Next::End)
        })
        .on_error("quarantine");
    agent.add_state("quarantine", |ctx: Context| async move {
        ctx.set_state("quarantined", ctx.failure().map(|f| f.state));
        Ok(Next::End)
    });
    agent
        .add_state("recover", |ctx: Context| async move {
            ctx.set_state("recovered", ctx.failure().map(|f| f.state));
            ctx.set_state("fixed", true);
            Ok(Next::to("transform"))
        })
        .successors(["transform"]);
    agent.default_on_error("recover");
    agent
}

#[tokio::test]
async fn states_without_a_handler_go_to_the_default_and_their_own_handler_wins() {
    let report = pipeline(true).run().await.unwrap();
    // `transform` failed and went to the default handler, which fixed things and went back.
    assert_eq!(
        report
            .context
            .get_state::<Option<String>>("recovered")
            .unwrap(),
        Some("transform".to_owned())
    );
    assert_eq!(report.state("transform").unwrap().runs, 2);
    // `audit` failed and went to its own handler, not the default.
    assert_eq!(
        report
            .context
            .get_state::<Option<String>>("quarantined")
            .unwrap(),
        Some("audit".to_owned())
    );
    assert_eq!(report.state("recover").unwrap().runs, 1);
    let failed: Vec<&str> = report
        .dead_letters
        .iter()
        .map(|d| d.state.as_str())
        .collect();
    assert_eq!(failed, ["transform", "audit"]);

    let report = pipeline(false).run().await.unwrap();
    assert_eq!(report.state("quarantine").unwrap().runs, 0);
    assert_eq!(report.dead_letters.len(), 1);
}

#[tokio::test]
async fn the_default_handler_has_none_itself() {
    let mut agent = Agent::new("fragile");
    agent.add_state("work", |_ctx: Context| async { Err("first".into()) });
    agent.add_state("recover", |_ctx: Context| async {
        Err("the handler failed too".into())
    });
    agent.default_on_error("recover");
    let error = agent.run().await.unwrap_err();
    match error {
        FlowError::StateFailed { state, .. } => assert_eq!(state, "recover"),
        other => panic!("expected the handler's failure, got {other}"),
    }
}

#[test]
fn an_unknown_default_handler_is_refused_with_a_suggestion() {
    let mut agent = Agent::new("typo");
    agent.add_state("work", |_ctx: Context| async { Ok(Next::End) });
    agent.add_state("recover", |_ctx: Context| async { Ok(Next::End) });
    agent.default_on_error("recovr");
    let error = agent.validate().unwrap_err().to_string();
    assert!(
        error.contains("`default_on_error` names `recovr`")
            && error.contains("did you mean `recover`"),
        "{error}"
    );
}

struct Charge;

#[workflow(on_error = refund)]
impl Charge {
    #[state(entry)]
    async fn charge(&self, _ctx: &Context) -> StateResult {
        Err("card declined".into())
    }

    #[state]
    async fn refund(&self, ctx: &Context) -> StateResult {
        ctx.set_state("refunded", ctx.failure().map(|f| f.state));
        end!()
    }
}

#[tokio::test]
async fn the_macro_form_sets_the_default_handler() {
    assert_eq!(
        Charge::GRAPH.state("charge").unwrap().on_error,
        Some("refund")
    );
    assert_eq!(Charge::GRAPH.state("refund").unwrap().on_error, None);
    let report = Charge.agent().run().await.unwrap();
    assert_eq!(
        report
            .context
            .get_state::<Option<String>>("refunded")
            .unwrap(),
        Some("charge".to_owned())
    );
}
