//! The source supervisor: follows the source's assignments, starting one partition actor per
//! assigned partition (spread over the worker arbiters) and draining it on revoke. It
//! restarts a failed partition from its committed position, at most 5 times in 10 s per
//! partition; beyond that it escalates to the root supervisor.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use futures::future::join_all;
use tokio::sync::oneshot;

use crate::ports::AssignmentEvent;

use super::context::Shared;
use super::messages::{Drain, DrainAll, Escalate, PartitionFailed, Running};
use super::partition::PartitionActor;
use super::supervision::RestartIntensity;

pub struct SourceSupervisor {
    shared: Arc<Shared>,
    arbiters: Vec<ArbiterHandle>,
    root: Recipient<Escalate>,
    partitions: HashMap<u32, Addr<PartitionActor>>,
    intensity: HashMap<u32, RestartIntensity>,
    draining: bool,
}

impl SourceSupervisor {
    pub fn new(
        shared: Arc<Shared>,
        arbiters: Vec<ArbiterHandle>,
        root: Recipient<Escalate>,
    ) -> Self {
        SourceSupervisor {
            shared,
            arbiters,
            root,
            partitions: HashMap::new(),
            intensity: HashMap::new(),
            draining: false,
        }
    }

    fn start_partition(&mut self, partition: u32, ctx: &mut Context<Self>) {
        if self.draining || self.partitions.contains_key(&partition) {
            return;
        }
        let reader = match self.shared.ports.source.reader(partition) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(partition, error = %e, "cannot open partition");
                return;
            }
        };
        let shared = self.shared.clone();
        let me = ctx.address().recipient();
        let arbiter = &self.arbiters[partition as usize % self.arbiters.len()];
        let addr = PartitionActor::start_in_arbiter(arbiter, move |_| {
            PartitionActor::new(partition, shared, reader, me)
        });
        self.partitions.insert(partition, addr);
    }

    fn drain(&mut self, partitions: Vec<u32>) -> impl std::future::Future<Output = ()> {
        let mut waits = Vec::new();
        for p in partitions {
            if let Some(addr) = self.partitions.remove(&p) {
                let (done, rx) = oneshot::channel();
                addr.do_send(Drain { done });
                waits.push(async move {
                    match rx.await {
                        Ok(offset) => {
                            tracing::info!(partition = p, committed = offset, "partition revoked")
                        }
                        Err(_) => {
                            tracing::warn!(partition = p, "partition stopped before it drained")
                        }
                    }
                });
            }
        }
        join_all(waits).map(|_| ())
    }
}

use futures::FutureExt as _;

impl Actor for SourceSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        match self.shared.ports.source.take_assignments() {
            Some(rx) => {
                ctx.add_stream(tokio_stream_from(rx));
            }
            None => tracing::error!("the source's assignment stream was already taken"),
        }
    }
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<AssignmentEvent>,
) -> impl futures::Stream<Item = AssignmentEvent> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

impl StreamHandler<AssignmentEvent> for SourceSupervisor {
    fn handle(&mut self, event: AssignmentEvent, ctx: &mut Context<Self>) {
        match event {
            AssignmentEvent::Assigned(partitions) => {
                tracing::info!(?partitions, "partitions assigned");
                for p in partitions {
                    self.start_partition(p, ctx);
                }
            }
            AssignmentEvent::Revoked { partitions, done } => {
                tracing::info!(?partitions, "partitions revoked; draining");
                let wait = self.drain(partitions);
                ctx.spawn(wait.into_actor(self).map(|(), _, _| {
                    let _ = done.send(());
                }));
            }
        }
    }

    fn finished(&mut self, _ctx: &mut Context<Self>) {
        // The source closed its assignment stream; keep running what we have.
    }
}

impl Handler<PartitionFailed> for SourceSupervisor {
    type Result = ();

    fn handle(&mut self, msg: PartitionFailed, ctx: &mut Context<Self>) {
        self.partitions.remove(&msg.partition);
        if self.draining {
            return;
        }
        let allowed = self
            .intensity
            .entry(msg.partition)
            .or_default()
            .allow(Instant::now());
        if !allowed {
            self.root.do_send(Escalate {
                actor: "partition",
                reason: format!(
                    "partition {} failed more than 5 times in 10 s; last: {}",
                    msg.partition, msg.cause
                ),
            });
            return;
        }
        tracing::warn!(
            partition = msg.partition,
            cause = msg.cause,
            "restarting partition from its committed position"
        );
        self.start_partition(msg.partition, ctx);
    }
}

impl Handler<DrainAll> for SourceSupervisor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: DrainAll, _ctx: &mut Context<Self>) -> ResponseFuture<()> {
        self.draining = true;
        let all: Vec<u32> = self.partitions.keys().copied().collect();
        Box::pin(self.drain(all))
    }
}

impl Handler<Running> for SourceSupervisor {
    type Result = Vec<u32>;

    fn handle(&mut self, _: Running, _ctx: &mut Context<Self>) -> Vec<u32> {
        let mut v: Vec<u32> = self.partitions.keys().copied().collect();
        v.sort_unstable();
        v
    }
}
