//! The `MaintainStorageSession` stream at the edge: validates the `start`,
//! claims the session, runs its supervisor (`crate::session`), relays the
//! caller's reports in and the supervisor's events out.

use std::{collections::VecDeque, sync::Arc, time::Duration};

use tokio::sync::mpsc;
use tokio_stream::{StreamExt, adapters::Map, wrappers::ReceiverStream};
use tonic::{Status, Streaming};
use tracing::Instrument;

use super::{
    error::{CallError, SessionEnded, SessionRefused},
    status::{kvs_code, kvs_status, to_status},
};
use crate::{
    kvs::{
        Error, KvsClient,
        arn::{ChannelArn, InvalidField, ValidationError},
    },
    pb::{
        GiveUpReason, JoinReason, MaintainStorageSessionRequest, MaintainStorageSessionResponse,
        SessionGaveUp, SessionJoinFailed, SessionJoined, SessionReportKind, SessionStart,
        maintain_storage_session_request::Kind, maintain_storage_session_response,
    },
    recording::Recording,
    session::{Event, GiveUp, Reason, Report, Sessions, Settings, Stop, Supervisor},
};

pub(super) type EventStream = Map<ReceiverStream<Box<Answer>>, fn(Box<Answer>) -> Answer>;

type Answer = Result<MaintainStorageSessionResponse, Status>;

/// Events and reports in flight per stream: a slow reader holds up its own
/// supervisor, never memory. Events and answers travel boxed: a queue
/// allocates room for 32 of its items when it is made, and a session at
/// rest would hold that room (6.8 KiB for these two) for nothing.
const QUEUE: usize = 16;

/// Starts maintaining the session `start` names on `channel`; the returned
/// stream carries its events.
pub(super) async fn maintain(
    client: Arc<KvsClient>,
    sessions: &Arc<Sessions>,
    recording: &Arc<Recording>,
    channel: ChannelArn,
    start: &SessionStart,
    join_timeout: Duration,
    inbound: Streaming<MaintainStorageSessionRequest>,
) -> Result<EventStream, Status> {
    let settings = settings(start).map_err(|e| to_status(&e.into()))?;
    let claim = sessions
        .claim(&channel, &start.client_id)
        .await
        .map_err(|refusal| {
            to_status(&CallError::Session(SessionRefused {
                refusal,
                channel: channel.clone(),
                client_id: start.client_id.clone(),
            }))
        })?;
    let (reports_tx, reports) = mpsc::channel(QUEUE);
    let (events, events_rx) = mpsc::channel(QUEUE);
    let (out, out_rx) = mpsc::channel(QUEUE);
    let supervisor = Supervisor {
        client,
        channel,
        client_id: start.client_id.clone(),
        settings,
        join_timeout,
        claim,
        recording: recording.clone(),
    };
    // Its joins and log lines belong to the stream's call span.
    tokio::spawn(supervisor.run(reports, events).in_current_span());
    // The relay owns the supervisor's inputs: when it ends (the caller ended
    // or left its stream), the supervisor sees them close and stops.
    tokio::spawn(relay(inbound, reports_tx, events_rx, out));
    let unbox: fn(Box<Answer>) -> Answer = |answer| *answer;
    Ok(ReceiverStream::new(out_rx).map(unbox))
}

/// Moves the caller's reports in and the supervisor's events out, and never
/// stops reading the caller: a caller that does not read its events (or
/// whose HTTP/2 window is shut) must not make us stop reading its stream,
/// or HTTP/2 would hold what it sends, up to the stream and connection
/// windows, for as long as it likes. Events wait in bounded queues (the
/// supervisor waits on a full one); reports that find the supervisor's
/// queue full are coalesced to the latest, which is the one that matters.
async fn relay(
    mut inbound: Streaming<MaintainStorageSessionRequest>,
    reports: mpsc::Sender<Report>,
    mut events: mpsc::Receiver<Box<Event>>,
    out: mpsc::Sender<Box<Answer>>,
) {
    // Answers of one event not yet in the caller's queue.
    let mut unsent = VecDeque::new();
    // The latest report that found the supervisor's queue full.
    let mut latest: Option<Report> = None;
    // The last event (or a refused report) is queued: deliver it and end.
    let mut ending = false;
    loop {
        tokio::select! {
            permit = reports.reserve(), if latest.is_some() => {
                let (Ok(permit), Some(report)) = (permit, latest.take()) else { return };
                permit.send(report);
            }
            permit = out.reserve(), if !unsent.is_empty() => {
                let (Ok(permit), Some(item)) = (permit, unsent.pop_front()) else { return };
                permit.send(Box::new(item));
                if ending && unsent.is_empty() {
                    return;
                }
            }
            event = events.recv(), if unsent.is_empty() && !ending => {
                let Some(event) = event else { return };
                ending = matches!(*event, Event::GaveUp { .. });
                unsent.extend(answers(*event));
            }
            message = inbound.message(), if !ending => {
                let report = match message {
                    Ok(Some(MaintainStorageSessionRequest { kind: Some(Kind::Report(r)) })) => report(r.kind()),
                    Ok(Some(_)) => Err(ValidationError::Constraint(
                        "only the first message may be `start`; later ones are `report`s",
                    )
                    .of("start")),
                    // The caller ended its stream or went away.
                    Ok(None) | Err(_) => return,
                };
                match report {
                    Ok(report) if latest.is_some() => latest = Some(report),
                    Ok(report) => match reports.try_send(report) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(report)) => latest = Some(report),
                        Err(mpsc::error::TrySendError::Closed(_)) => return,
                    },
                    Err(invalid) => {
                        unsent.push_back(Err(to_status(&invalid.into())));
                        ending = true;
                    }
                }
            }
            () = out.closed() => return,
        }
    }
}

/// The session settings `start` asks for, each within its bounds.
fn settings(start: &SessionStart) -> Result<Settings, InvalidField> {
    let mut settings = Settings::default();
    let bounded = |field, value: Option<prost_types::Duration>, min: u64, max: u64| {
        let Some(value) = value else {
            return Ok(None);
        };
        let d = Duration::try_from(value).unwrap_or(Duration::MAX);
        if d.is_zero() {
            return Ok(None);
        }
        if d < Duration::from_secs(min) || d > Duration::from_secs(max) {
            return Err(ValidationError::Between {
                min,
                max,
                unit: " s",
            }
            .of(field));
        }
        Ok(Some(d))
    };
    if let Some(d) = bounded("start.offer_wait", start.offer_wait, 1, 60)? {
        settings.offer_wait = d;
    }
    if let Some(d) = bounded("start.rejoin_after", start.rejoin_after, 1, 59 * 60)? {
        settings.rejoin_after = d;
    }
    if let Some(d) = bounded("start.failure_window", start.failure_window, 1, 24 * 3600)? {
        settings.failure_window = d;
    }
    if let Some(d) = bounded("start.no_media_after", start.no_media_after, 1, 3600)? {
        // Fragments are the master's media: a viewer records none.
        if !start.client_id.is_empty() {
            return Err(ValidationError::Constraint(
                "is for master sessions only (client_id empty)",
            )
            .of("start.no_media_after"));
        }
        settings.no_media_after = Some(d);
    }
    match start.failure_budget {
        0 => {}
        n @ 1..=100 => settings.failure_budget = n,
        _ => {
            return Err(ValidationError::Between {
                min: 1,
                max: 100,
                unit: "",
            }
            .of("start.failure_budget"));
        }
    }
    Ok(settings)
}

fn report(kind: SessionReportKind) -> Result<Report, InvalidField> {
    Ok(match kind {
        SessionReportKind::OfferReceived => Report::OfferReceived,
        SessionReportKind::Connected => Report::Connected,
        SessionReportKind::Disconnected => Report::Disconnected,
        SessionReportKind::RejoinRequested => Report::RejoinRequested,
        SessionReportKind::Unspecified => {
            return Err(ValidationError::Constraint(
                "must be set to one of the SessionReportKind values",
            )
            .of("report.kind"));
        }
    })
}

/// The stream items for one event: the event, and after the last one the
/// status the stream ends with.
fn answers(event: Event) -> Vec<Answer> {
    use maintain_storage_session_response::Event as Pb;
    let respond = |event| {
        Ok(MaintainStorageSessionResponse {
            time: Some(std::time::SystemTime::now().into()),
            event: Some(event),
        })
    };
    match event {
        Event::Joined {
            attempt,
            request_id,
            reason,
        } => vec![respond(Pb::Joined(SessionJoined {
            attempt,
            aws_request_id: request_id,
            reason: join_reason(reason).into(),
        }))],
        Event::JoinFailed {
            attempt,
            error,
            next_attempt_in,
        } => vec![respond(Pb::JoinFailed(SessionJoinFailed {
            attempt,
            code: kvs_code(&error).into(),
            message: error.to_string(),
            next_attempt_in: next_attempt_in.and_then(|d| d.try_into().ok()),
        }))],
        Event::GaveUp { why, error } => {
            let (reason, ended) = match why {
                Stop::Policy(GiveUp::FailureBudget) => (
                    GiveUpReason::FailureBudget,
                    SessionEnded::FailureBudget(error.clone()),
                ),
                Stop::Policy(GiveUp::Final) => (GiveUpReason::FinalError, SessionEnded::Final),
                Stop::Draining => (GiveUpReason::Draining, SessionEnded::Draining),
                Stop::LeaseLost => (GiveUpReason::LeaseLost, SessionEnded::LeaseLost),
            };
            // A final error ends the stream with its own status.
            let end = match (&ended, &error) {
                (SessionEnded::Final, Some(error)) => kvs_status(error),
                _ => to_status(&ended.into()),
            };
            let gave_up = SessionGaveUp {
                reason: reason.into(),
                code: error.as_ref().map_or(0, |e| kvs_code(e).into()),
                message: error.as_ref().map(Error::to_string).unwrap_or_default(),
            };
            vec![respond(Pb::GaveUp(gave_up)), Err(end)]
        }
    }
}

fn join_reason(reason: Reason) -> JoinReason {
    match reason {
        Reason::Initial => JoinReason::Initial,
        Reason::NoOffer => JoinReason::NoOffer,
        Reason::SessionLimit => JoinReason::SessionLimit,
        Reason::Disconnected => JoinReason::Disconnected,
        Reason::Requested => JoinReason::Requested,
        Reason::NoMedia => JoinReason::NoMedia,
    }
}
