//! The root supervisor: owns the source supervisor, and is where failures beyond a
//! supervisor's restart intensity end up. Escalation stops consumption and reports the
//! failure, so the process exits non-zero and its orchestrator restarts it from the last
//! commit (crash-only at the top of the tree).

use actix::prelude::*;
use tokio::sync::watch;

use super::messages::{DrainAll, Escalate};

/// Drain and commit every partition (SIGTERM, end of the demo).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

/// Attach the source supervisor once it is started.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Attach(pub Recipient<DrainAll>);

pub struct RootSupervisor {
    source: Option<Recipient<DrainAll>>,
    failure: watch::Sender<Option<String>>,
}

impl RootSupervisor {
    pub fn new(failure: watch::Sender<Option<String>>) -> Self {
        RootSupervisor {
            source: None,
            failure,
        }
    }
}

impl Actor for RootSupervisor {
    type Context = Context<Self>;
}

impl Handler<Attach> for RootSupervisor {
    type Result = ();

    fn handle(&mut self, msg: Attach, _ctx: &mut Context<Self>) {
        self.source = Some(msg.0);
    }
}

impl Handler<Escalate> for RootSupervisor {
    type Result = ();

    fn handle(&mut self, msg: Escalate, _ctx: &mut Context<Self>) {
        tracing::error!(
            actor = msg.actor,
            reason = msg.reason,
            "unrecoverable failure; stopping"
        );
        let _ = self
            .failure
            .send(Some(format!("{} failed: {}", msg.actor, msg.reason)));
    }
}

impl Handler<Shutdown> for RootSupervisor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Shutdown, _ctx: &mut Context<Self>) -> ResponseFuture<()> {
        let source = self.source.clone();
        Box::pin(async move {
            if let Some(s) = source {
                let _ = s.send(DrainAll).await;
            }
        })
    }
}
