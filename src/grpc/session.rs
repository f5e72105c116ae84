//! The `MaintainStorageSession` stream at the edge: validates the `start`,
//! claims the session, and runs its supervisor (`crate::session`) over the
//! caller's stream: reports in, events out.

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
    session::{Caller, Event, GiveUp, Gone, Reason, Report, Sessions, Settings, Stop, Supervisor},
};

pub(super) type EventStream = Map<ReceiverStream<Box<Answer>>, fn(Box<Answer>) -> Answer>;

type Answer = Result<MaintainStorageSessionResponse, Status>;

/// Answers queued for the caller, and reports kept while its supervisor is
/// busy: a slow reader holds up its own supervisor, never memory. Answers
/// travel boxed: a queue allocates room for 32 of its items when it is
/// made, and a session at rest would hold that room for nothing.
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
    let caller = Relay {
        inbound: Inbound {
            stream: inbound,
            kept: VecDeque::new(),
            open: true,
            refused: None,
        },
        out,
    };
    // Its joins and log lines belong to the stream's call span.
    tokio::spawn(supervisor.run(caller).in_current_span());
    let unbox: fn(Box<Answer>) -> Answer = |answer| *answer;
    Ok(ReceiverStream::new(out_rx).map(unbox))
}

/// The caller's side of a session: its reports in, the supervisor's events
/// out as answers.
struct Relay {
    inbound: Inbound,
    out: mpsc::Sender<Box<Answer>>,
}

/// The caller's stream, read whenever the supervisor waits.
struct Inbound {
    stream: Streaming<MaintainStorageSessionRequest>,
    /// Reports read while the supervisor was busy, oldest first; past
    /// `QUEUE` the newest replaces the last, which is the one that matters.
    kept: VecDeque<Report>,
    /// Neither ended by the caller nor refused.
    open: bool,
    /// Why the stream was refused, until the caller is told.
    refused: Option<Status>,
}

impl Inbound {
    /// Reads the caller's next message (keeping a report); false once no
    /// more will be read: the caller ended its stream, stopped listening
    /// (`out` closed) or sent what it may not.
    async fn read(&mut self, out: &mpsc::Sender<Box<Answer>>) -> bool {
        if !self.open {
            return false;
        }
        let message = tokio::select! {
            message = self.stream.message() => message,
            () = out.closed() => Ok(None),
        };
        let report = match message {
            Ok(Some(MaintainStorageSessionRequest {
                kind: Some(Kind::Report(r)),
            })) => report(r.kind()),
            Ok(Some(_)) => Err(ValidationError::Constraint(
                "only the first message may be `start`; later ones are `report`s",
            )
            .of("start")),
            // The caller ended its stream or went away.
            Ok(None) | Err(_) => {
                self.open = false;
                return false;
            }
        };
        match report {
            Ok(report) => {
                if self.kept.len() == QUEUE {
                    self.kept.pop_back();
                }
                self.kept.push_back(report);
            }
            Err(invalid) => {
                self.refused = Some(to_status(&invalid.into()));
                self.open = false;
            }
        }
        self.open
    }
}

impl Relay {
    /// Ends the caller's stream with why it was refused, if it was. Taken
    /// only once there is room for it: a wait given up keeps it.
    async fn refuse(&mut self) {
        if self.inbound.refused.is_none() {
            return;
        }
        if let (Ok(permit), Some(status)) = (self.out.reserve().await, self.inbound.refused.take())
        {
            permit.send(Box::new(Err(status)));
        }
    }
}

impl Caller for Relay {
    async fn report(&mut self) -> Option<Report> {
        loop {
            if let Some(report) = self.inbound.kept.pop_front() {
                return Some(report);
            }
            if !self.inbound.read(&self.out).await {
                self.refuse().await;
                return None;
            }
        }
    }

    async fn gone(&mut self) {
        while self.inbound.read(&self.out).await {}
        self.refuse().await;
    }

    async fn tell(&mut self, event: Event) -> Result<(), Gone> {
        // After the last event the caller's stream is not read: it ends.
        let last = matches!(event, Event::GaveUp { .. });
        for answer in answers(event) {
            let permit = loop {
                tokio::select! {
                    permit = self.out.reserve() => break permit.map_err(|_| Gone)?,
                    _ = self.inbound.read(&self.out), if self.inbound.open && !last => {}
                }
            };
            permit.send(Box::new(answer));
        }
        if self.inbound.refused.is_some() {
            self.refuse().await;
            return Err(Gone);
        }
        Ok(())
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
