//! The source supervisor: follows the source's assignments, starting one partition actor per
//! assigned partition (spread over the worker arbiters) and draining it on revoke. It
//! restarts a failed partition from its committed position, at most 5 times in 10 s per
//! partition; beyond that it escalates to the root supervisor.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures::future::join_all;
use tokio::sync::oneshot;

use crate::ports::{AssignmentEvent, SourceError};

use super::context::Shared;
use super::messages::{Abandon, Drain, DrainAll, Escalate, PartitionFailed, Running};
use super::partition::PartitionActor;
use super::supervision::RestartIntensity;

pub struct SourceSupervisor {
    shared: Arc<Shared>,
    arbiters: Vec<ArbiterHandle>,
    root: Recipient<Escalate>,
    partitions: HashMap<u32, Addr<PartitionActor>>,
    /// What the source currently assigns to this instance.
    assigned: HashSet<u32>,
    /// Partitions whose reader is being opened (off this thread: it may block on the broker).
    starting: HashSet<u32>,
    intensity: HashMap<u32, RestartIntensity>,
    draining: bool,
}

/// Retry opening a partition's reader after this long.
const REOPEN_AFTER: Duration = Duration::from_secs(1);

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
            assigned: HashSet::new(),
            starting: HashSet::new(),
            intensity: HashMap::new(),
            draining: false,
        }
    }

    /// Opens the partition's reader on a blocking thread (a Kafka restart seeks, which waits
    /// for the broker), then starts its actor if the partition is still ours.
    fn start_partition(&mut self, partition: u32, ctx: &mut Context<Self>) {
        if self.draining
            || self.partitions.contains_key(&partition)
            || !self.starting.insert(partition)
        {
            return;
        }
        let source = self.shared.ports.source.clone();
        let open = tokio::task::spawn_blocking(move || source.reader(partition));
        ctx.spawn(open.into_actor(self).map(move |opened, act, ctx| {
            act.starting.remove(&partition);
            if act.draining || !act.assigned.contains(&partition) {
                return;
            }
            let reader = match opened {
                Ok(Ok(r)) => r,
                Ok(Err(SourceError::NotAssigned(_))) => {
                    tracing::warn!(partition, "partition no longer assigned; not starting it");
                    return;
                }
                Ok(Err(e)) => {
                    tracing::error!(partition, error = %e, "cannot open partition; retrying");
                    ctx.run_later(REOPEN_AFTER, move |act, ctx| act.start_partition(partition, ctx));
                    return;
                }
                Err(e) => {
                    tracing::error!(partition, error = %e, "opening the partition panicked; retrying");
                    ctx.run_later(REOPEN_AFTER, move |act, ctx| act.start_partition(partition, ctx));
                    return;
                }
            };
            let shared = act.shared.clone();
            let me = ctx.address().recipient();
            let arbiter = &act.arbiters[partition as usize % act.arbiters.len()];
            let addr = PartitionActor::start_in_arbiter(arbiter, move |_| {
                PartitionActor::new(partition, shared, reader, me)
            });
            act.partitions.insert(partition, addr);
        }));
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
                    self.assigned.insert(p);
                    self.start_partition(p, ctx);
                }
            }
            AssignmentEvent::Lost(partitions) => {
                tracing::warn!(
                    ?partitions,
                    "partitions lost (this member left the group): stopping them without committing"
                );
                for p in partitions {
                    self.assigned.remove(&p);
                    if let Some(addr) = self.partitions.remove(&p) {
                        addr.do_send(Abandon);
                    }
                }
            }
            AssignmentEvent::Revoked { partitions, done } => {
                tracing::info!(?partitions, "partitions revoked; draining");
                for p in &partitions {
                    self.assigned.remove(p);
                }
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
