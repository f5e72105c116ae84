//! Keeps a channel's storage session recorded: a supervisor per maintained
//! session that joins, watches what the caller reports from its signaling
//! connection, and joins again when the session needs it (see [`rejoin`]).
//!
//! [`Sessions`] is the registry (`registry.rs`: one supervisor per channel
//! and client id, at most `capacity` at once, all told to stop when the
//! sidecar drains; with a shared store, one per channel across every
//! replica, through a lease each supervisor renews while it lives,
//! `lease.rs`); [`Supervisor::run`] is the driver (`driver.rs`) that runs a
//! [`rejoin::Policy`] over the KVS client and turns what happens into [`Event`]s.

mod driver;
mod lease;
mod registry;
pub(crate) mod rejoin;

pub(crate) use self::{
    driver::{Caller, Event, Gone, Stop, Supervisor},
    registry::{Refusal, Sessions},
    rejoin::{GiveUp, Reason, Report, Settings},
};
