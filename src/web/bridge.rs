//! The WebSocket bridge: a browser's JSON messages become binary frames written into an
//! in-memory pipe whose other end is a Session, and the frames the Session writes become
//! messages for the browser (`mapping` does each conversion). Two pumps, one per
//! direction; each end's close becomes the other's.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};
use tracing::{debug, warn};

use super::mapping::{frame_to_message, message_to_frame, MappingError};
use crate::config::Config;
use crate::protocol::MAX_FRAME_PAYLOAD;

/// Bytes in flight in the pipe between the bridge and the Session, each way: with the
/// Session's bounded output queue, what a slow browser makes the script wait on.
pub(super) const PIPE_BYTES: usize = 64 * 1024;
/// Largest WebSocket message (and frame) taken from a browser: the largest frame's
/// payload in base64 (4/3 of 128 KiB), plus its JSON. A bigger one ends the WebSocket
/// before it is buffered whole.
const MAX_MESSAGE: usize = 192 * 1024;
/// After the Session's end, how long the browser may take to answer our close, and the
/// bound on delivering the end to a browser that does not read.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// What ended the browser's side.
#[derive(Debug)]
enum Ended {
    /// A message that cannot be a frame: the browser hears why.
    Refused(MappingError),
    /// A binary message: this protocol is text only.
    Binary,
}

/// Runs the WebSocket of one session until both directions are done, bounded by the
/// session's time limit plus the time to close.
pub(super) async fn run(io: TokioIo<Upgraded>, pipe: DuplexStream, cfg: &Config) {
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
        // Our own queue of unsent messages is bounded too: the pump waits on the sink.
        .max_write_buffer_size(4 * MAX_MESSAGE);
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
    // The Session ends by its time limit, which it counts from the same start; this
    // only catches a browser that neither reads nor closes after that.
    let bound = cfg.session_timeout + cfg.shutdown_grace + 2 * CLOSE_WAIT;
    if tokio::time::timeout(bound, pump(ws, pipe)).await.is_err() {
        debug!("WebSocket dropped after the session's time limit");
    }
}

async fn pump(ws: WebSocketStream<TokioIo<Upgraded>>, pipe: DuplexStream) {
    let (mut ws_tx, mut ws_rx) = ws.split();
    let (pipe_rx, mut pipe_tx) = tokio::io::split(pipe);
    let (ended_tx, mut ended_rx) = oneshot::channel::<Ended>();

    // Browser -> Session. Pings are answered by tungstenite itself.
    let upstream = async move {
        while let Some(message) = ws_rx.next().await {
            let frame = match message {
                Ok(Message::Text(text)) => message_to_frame(text.as_str()).map_err(Ended::Refused),
                Ok(Message::Binary(_)) => Err(Ended::Binary),
                Ok(Message::Close(_)) => break,
                Ok(_) => continue,
                Err(e) => {
                    debug!(error = %e, "WebSocket read failed");
                    break;
                }
            };
            match frame {
                Ok(bytes) => {
                    // Never blocks long: the Session reads its client without pause.
                    if pipe_tx.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                Err(ended) => {
                    let _ = ended_tx.send(ended);
                    break;
                }
            }
        }
        // The end of the browser's side is the end of the client's stream for the
        // Session: a disconnect before the end kills the script, as for a binary client.
        let _ = pipe_tx.shutdown().await;
    };

    // Session -> browser, until the Session closes its side (after its terminal frame).
    let downstream = async move {
        let codec = LengthDelimitedCodec::builder()
            .length_field_length(4)
            .max_frame_length(MAX_FRAME_PAYLOAD + 1)
            .new_codec();
        let mut frames = FramedRead::new(pipe_rx, codec);
        let mut close = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        while let Some(body) = frames.next().await {
            let Ok(body) = body else { break };
            match frame_to_message(&body) {
                Ok(text) => {
                    if ws_tx.send(Message::text(text)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    // Our own Session wrote it: a bug, not the browser's fault.
                    warn!(error = %e, "a frame with no WebSocket message");
                    close.code = CloseCode::Error;
                    break;
                }
            }
        }
        // The browser learns why its message ended the session (the Session saw only a
        // disconnect), in the shape of an ERROR frame.
        if let Ok(ended) = ended_rx.try_recv() {
            let (code, message) = match ended {
                Ended::Refused(e) => (CloseCode::Policy, format!("bad message: {e}")),
                Ended::Binary => (
                    CloseCode::Unsupported,
                    "binary WebSocket messages are not part of this protocol".to_string(),
                ),
            };
            let error =
                serde_json::json!({"type": "error", "code": "protocol", "message": message});
            let _ = ws_tx.send(Message::text(error.to_string())).await;
            close.code = code;
        }
        let _ = ws_tx.send(Message::Close(Some(close))).await;
    };

    tokio::pin!(upstream, downstream);
    tokio::select! {
        // The browser left or misbehaved: the Session ends at once and closes its side.
        _ = &mut upstream => {
            let _ = tokio::time::timeout(CLOSE_WAIT, downstream).await;
        }
        // The session is over and our close is sent: wait a little for the browser's.
        _ = &mut downstream => {
            let _ = tokio::time::timeout(CLOSE_WAIT, upstream).await;
        }
    }
}
