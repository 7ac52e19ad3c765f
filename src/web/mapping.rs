//! The WebSocket's JSON messages and the protocol's binary frames, one to one (protocol
//! §13): pure functions, no I/O. A browser's message becomes the bytes of one client
//! frame, which the bridge writes to the Session as any binary client would; a server
//! frame read from the Session becomes one message for the browser.
//!
//! Control frames keep their JSON object and gain `"type"`; data frames carry their bytes
//! as base64 in `"data"`; `SIGNAL` and `STDIN_CREDIT` carry their number. The Session
//! validates what a frame says (required fields, limits, order): this module only checks
//! that a message can be a frame at all, so the rules live in one place.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde_json::{Map, Value};

/// How a frame's payload is carried in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// The payload is a JSON object: its fields, plus `type`.
    Object,
    /// Raw bytes: base64 (standard alphabet, padded) in `data`.
    Data,
    /// No payload.
    Empty,
    /// One byte: a number in `signal`.
    Signal,
    /// A u32 BE: a number in `bytes`.
    Credit,
}

/// The frames a browser may send: type byte, message type, shape. Client types only: a
/// server type in a browser's message is refused here, as the Session would refuse it.
const CLIENT: [(u8, &str, Shape); 8] = [
    (0x01, "hello", Shape::Object),
    (0x02, "script", Shape::Data),
    (0x03, "stdin", Shape::Data),
    (0x04, "stdin_eof", Shape::Empty),
    (0x05, "signal", Shape::Signal),
    (0x06, "cancel", Shape::Empty),
    // Feature `files` (§10.2): the Session refuses them unless it granted the feature.
    (0x07, "file_in", Shape::Object),
    (0x08, "file_in_data", Shape::Data),
];

/// The features (protocol §10.1) whose frames all have messages here; a browser's HELLO
/// asks for no other.
const WS_FEATURES: &[&str] = &[
    crate::protocol::INPUT_WANTED,
    crate::protocol::files::FEATURE,
];

/// The frames the server sends. A feature's frame (protocol §10.1) is one more row here:
/// it is only ever sent to a session that asked for the feature in `hello.features`, so a
/// browser that did not ask never meets its type.
const SERVER: [(u8, &str, Shape); 12] = [
    (0x81, "welcome", Shape::Object),
    (0x82, "queued", Shape::Object),
    (0x83, "started", Shape::Object),
    (0x84, "stdout", Shape::Data),
    (0x85, "stderr", Shape::Data),
    (0x86, "stdin_credit", Shape::Credit),
    (0x87, "end", Shape::Object),
    (0x88, "error", Shape::Object),
    // Feature `files` (§10.2).
    (0x89, "file_out", Shape::Object),
    (0x8a, "file_out_data", Shape::Data),
    (0x8b, "files_out_end", Shape::Object),
    // Feature `input_wanted` (§10.3).
    (0x8c, "input_wanted", Shape::Empty),
];

/// Why a message or a frame could not be mapped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    #[error("not a JSON object: {0}")]
    NotAnObject(String),
    #[error("no \"type\" string")]
    NoType,
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    #[error("\"{field}\" of a {kind} message is missing or not {expected}")]
    BadField {
        kind: &'static str,
        field: &'static str,
        expected: &'static str,
    },
    #[error("empty frame")]
    EmptyFrame,
    #[error("server frame type {0:#04x} has no message")]
    UnknownFrame(u8),
    #[error("server frame {kind} has a malformed payload")]
    BadPayload { kind: &'static str },
}

/// A browser's message as the bytes of one client frame: length prefix, type, payload.
pub fn message_to_frame(text: &str) -> Result<Vec<u8>, MappingError> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| MappingError::NotAnObject(e.to_string()))?;
    let Value::Object(mut object) = value else {
        return Err(MappingError::NotAnObject("another JSON value".into()));
    };
    let Some(Value::String(kind)) = object.remove("type") else {
        return Err(MappingError::NoType);
    };
    let Some(&(ty, name, shape)) = CLIENT.iter().find(|(_, name, _)| *name == kind) else {
        return Err(MappingError::UnknownType(kind));
    };
    if ty == 0x01 {
        // A feature whose frames have no message here must not be granted to a browser:
        // its first frame would end the session unmapped (protocol §10.1).
        if let Some(Value::Array(features)) = object.get_mut("features") {
            features.retain(|f| f.as_str().is_some_and(|f| WS_FEATURES.contains(&f)));
        }
    }
    let payload = match shape {
        // The rest of the object is the frame's JSON as is: the Session checks it.
        Shape::Object => serde_json::to_vec(&object).expect("a map always serialises"),
        Shape::Data => {
            let data = object.get("data").and_then(Value::as_str);
            let bad = || MappingError::BadField {
                kind: name,
                field: "data",
                expected: "a base64 string",
            };
            BASE64.decode(data.ok_or_else(bad)?).map_err(|_| bad())?
        }
        Shape::Empty => Vec::new(),
        Shape::Signal => {
            // One byte on the wire: a number beyond it cannot be a signal; which numbers
            // are allowed is the Session's rule (protocol §7).
            let n = object.get("signal").and_then(Value::as_u64);
            let n = n.and_then(|n| u8::try_from(n).ok());
            vec![n.ok_or(MappingError::BadField {
                kind: name,
                field: "signal",
                expected: "an integer from 0 to 255",
            })?]
        }
        // Only the server sends credit.
        Shape::Credit => unreachable!("no client frame carries credit"),
    };
    let mut frame = Vec::with_capacity(5 + payload.len());
    // The payload may exceed the frame limit: the Session then refuses the length, as it
    // would a binary client's (the WebSocket's message bound keeps it near that size).
    let len = u32::try_from(1 + payload.len()).unwrap_or(u32::MAX);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.push(ty);
    frame.extend_from_slice(&payload);
    Ok(frame)
}

/// A server frame's body (type byte and payload, without the length prefix) as a message.
pub fn frame_to_message(body: &[u8]) -> Result<String, MappingError> {
    let (&ty, payload) = body.split_first().ok_or(MappingError::EmptyFrame)?;
    let Some(&(_, name, shape)) = SERVER.iter().find(|(t, _, _)| *t == ty) else {
        return Err(MappingError::UnknownFrame(ty));
    };
    let bad = || MappingError::BadPayload { kind: name };
    let mut object = Map::new();
    object.insert("type".into(), Value::String(name.into()));
    match shape {
        Shape::Object => {
            let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(payload) else {
                return Err(bad());
            };
            // The frame's own fields after "type", in their order: the frame's JSON is
            // kept, not rebuilt, so a field the server adds reaches the browser too.
            let text = std::str::from_utf8(payload)
                .map_err(|_| bad())?
                .trim_start();
            let rest = text.strip_prefix('{').ok_or_else(bad)?;
            return Ok(if fields.is_empty() {
                format!("{{\"type\":\"{name}\"}}")
            } else {
                format!("{{\"type\":\"{name}\",{rest}")
            });
        }
        Shape::Data => {
            object.insert("data".into(), Value::String(BASE64.encode(payload)));
        }
        Shape::Empty if payload.is_empty() => {}
        Shape::Credit => {
            let n: [u8; 4] = payload.try_into().map_err(|_| bad())?;
            object.insert("bytes".into(), Value::from(u32::from_be_bytes(n)));
        }
        Shape::Empty | Shape::Signal => return Err(bad()),
    }
    Ok(Value::Object(object).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::files::{FileHeader, FilesHello, FilesOutEnd, Skipped};
    use crate::protocol::{End, EndReason, Frame, FrameCodec, Hello, Queued, Usage, STDIN_WINDOW};
    use bytes::BytesMut;
    use tokio_util::codec::{Decoder, Encoder};

    /// The frame the Session's own decoder reads from a browser's message.
    fn decoded(text: &str) -> Frame {
        let bytes = message_to_frame(text).unwrap();
        let mut buf = BytesMut::from(&bytes[..]);
        let frame = FrameCodec::new().decode(&mut buf).unwrap().unwrap();
        assert!(buf.is_empty(), "exactly one frame");
        frame
    }

    /// The message the browser gets for a frame the Session writes.
    fn message(frame: Frame) -> Value {
        let mut buf = BytesMut::new();
        FrameCodec::new().encode(frame, &mut buf).unwrap();
        let text = frame_to_message(&buf[4..]).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    #[test]
    fn every_client_message_becomes_its_frame() {
        let hello = decoded(
            r#"{"type":"hello","version":1,"script_size":5,"name":"a.py","features":["files","x","input_wanted"],"files":{"count":1,"bytes":3,"get":["*.png"]}}"#,
        );
        let Frame::Hello(Hello {
            version,
            script_size,
            name,
            features,
            files,
            ..
        }) = hello
        else {
            panic!("{hello:?}")
        };
        assert_eq!((version, script_size), (1, 5));
        assert_eq!(name.as_deref(), Some("a.py"));
        assert_eq!(
            features,
            ["files", "input_wanted"],
            "a feature without messages is not asked for"
        );
        assert_eq!(
            files,
            Some(FilesHello {
                count: 1,
                bytes: 3,
                get: vec!["*.png".into()]
            })
        );
        // "aGk=" is base64 for "hi"; arbitrary bytes survive.
        assert_eq!(
            decoded(r#"{"type":"script","data":"aGk="}"#),
            Frame::Script("hi".into())
        );
        assert_eq!(
            decoded(r#"{"type":"stdin","data":"/wAK"}"#),
            Frame::Stdin(vec![0xff, 0, b'\n'].into())
        );
        assert_eq!(decoded(r#"{"type":"stdin_eof"}"#), Frame::StdinEof);
        assert_eq!(decoded(r#"{"type":"signal","signal":2}"#), Frame::Signal(2));
        assert_eq!(decoded(r#"{"type":"cancel","extra":true}"#), Frame::Cancel);
        // Feature `files`: the header's fields at the top level, the content in base64.
        assert_eq!(
            decoded(r#"{"type":"file_in","name":"data/a.csv","size":3}"#),
            Frame::FileIn(FileHeader {
                name: "data/a.csv".into(),
                size: 3
            })
        );
        assert_eq!(
            decoded(r#"{"type":"file_in_data","data":"MSwy"}"#),
            Frame::FileInData("1,2".into())
        );
    }

    #[test]
    fn a_file_message_the_session_must_refuse_is_passed_on_for_it_to_refuse() {
        // A refused name and an empty chunk are the Session's ERROR protocol (§10.2):
        // the mapping neither checks names nor drops empty data, so the rule stays there.
        assert_eq!(
            decoded(r#"{"type":"file_in","name":"../x","size":1}"#),
            Frame::FileIn(FileHeader {
                name: "../x".into(),
                size: 1
            })
        );
        assert_eq!(
            message_to_frame(r#"{"type":"file_in_data","data":""}"#).unwrap(),
            [0, 0, 0, 1, 0x08]
        );
        // A header without its size does not decode: the Session's protocol error.
        let bytes = message_to_frame(r#"{"type":"file_in","name":"a"}"#).unwrap();
        let mut buf = BytesMut::from(&bytes[..]);
        assert!(FrameCodec::new().decode(&mut buf).is_err());
        let err = message_to_frame(r#"{"type":"file_in_data","data":"%"}"#).unwrap_err();
        assert!(matches!(err, MappingError::BadField { .. }), "{err:?}");
        // The server's file messages are not the browser's to send.
        for kind in ["file_out", "file_out_data", "files_out_end"] {
            let text = format!(r#"{{"type":"{kind}"}}"#);
            assert_eq!(
                message_to_frame(&text).unwrap_err(),
                MappingError::UnknownType(kind.into())
            );
        }
    }

    #[test]
    fn a_hello_the_session_must_refuse_is_passed_on_for_it_to_refuse() {
        // A wrong field type is the Session's ERROR protocol, with its usual message.
        let bytes = message_to_frame(r#"{"type":"hello","version":"one"}"#).unwrap();
        let mut buf = BytesMut::from(&bytes[..]);
        assert!(FrameCodec::new().decode(&mut buf).is_err());
        // So is an empty stdin, and a signal the protocol does not allow.
        assert_eq!(
            message_to_frame(r#"{"type":"stdin","data":""}"#).unwrap(),
            [0, 0, 0, 1, 0x03]
        );
        assert_eq!(
            message_to_frame(r#"{"type":"signal","signal":19}"#).unwrap(),
            [0, 0, 0, 2, 0x05, 19]
        );
    }

    #[test]
    fn messages_that_cannot_be_frames_are_refused_by_name() {
        let err = |t: &str| message_to_frame(t).unwrap_err();
        assert!(matches!(err("[1]"), MappingError::NotAnObject(_)));
        assert!(matches!(err("{"), MappingError::NotAnObject(_)));
        assert_eq!(err(r#"{"data":"aGk="}"#), MappingError::NoType);
        assert_eq!(err(r#"{"type":7}"#), MappingError::NoType);
        // A server message sent back, or a frame name in capitals, is no client message.
        assert_eq!(
            err(r#"{"type":"stdout","data":""}"#),
            MappingError::UnknownType("stdout".into())
        );
        assert_eq!(
            err(r#"{"type":"HELLO"}"#),
            MappingError::UnknownType("HELLO".into())
        );
        for bad in [
            r#"{"type":"stdin"}"#,
            r#"{"type":"stdin","data":"not base64!"}"#,
            r#"{"type":"script","data":5}"#,
            r#"{"type":"signal","signal":256}"#,
            r#"{"type":"signal","signal":-1}"#,
            r#"{"type":"signal"}"#,
        ] {
            assert!(matches!(err(bad), MappingError::BadField { .. }), "{bad}");
        }
    }

    #[test]
    fn every_server_frame_becomes_its_message() {
        let welcome = Frame::Welcome(crate::protocol::Welcome {
            version: 1,
            server: "pyexecd 0.1.0".into(),
            session: "7".into(),
            limits: crate::protocol::Limits {
                script_size: 10,
                timeout_ms: 20,
                output_bytes: 30,
                stdin_window: STDIN_WINDOW,
                files: None,
            },
            features: vec![],
        });
        let w = message(welcome);
        assert_eq!(w["type"], "welcome");
        assert_eq!(w["limits"]["stdin_window"], STDIN_WINDOW);
        assert_eq!(w["session"], "7");
        assert_eq!(
            message(Frame::Queued(Queued { position: 2 })),
            serde_json::json!({"type":"queued","position":2})
        );
        assert_eq!(
            message(Frame::Stdout(vec![0xff, b'a'].into())),
            serde_json::json!({"type":"stdout","data":"/2E="})
        );
        assert_eq!(
            message(Frame::Stderr("e".into())),
            serde_json::json!({"type":"stderr","data":"ZQ=="})
        );
        assert_eq!(
            message(Frame::FileOut(FileHeader {
                name: "out/plot.png".into(),
                size: 2
            })),
            serde_json::json!({"type":"file_out","name":"out/plot.png","size":2})
        );
        assert_eq!(
            message(Frame::FileOutData(vec![0x89, b'P'].into())),
            serde_json::json!({"type":"file_out_data","data":"iVA="})
        );
        assert_eq!(
            message(Frame::FilesOutEnd(FilesOutEnd {
                unmatched: vec!["*.csv".into()],
                skipped: vec![Skipped {
                    name: "link".into(),
                    reason: "a symbolic link".into()
                }],
                message: String::new(),
            })),
            serde_json::json!({"type":"files_out_end","unmatched":["*.csv"],
                "skipped":[{"name":"link","reason":"a symbolic link"}]})
        );
        assert_eq!(
            message(Frame::InputWanted),
            serde_json::json!({"type":"input_wanted"})
        );
        assert_eq!(
            message(Frame::StdinCredit(65536)),
            serde_json::json!({"type":"stdin_credit","bytes":65536})
        );
        let end = message(Frame::End(End {
            reason: EndReason::Exited,
            exit_code: 3,
            signal: None,
            duration_ms: 9,
            message: String::new(),
            usage: Usage {
                cpu_ms: Some(4),
                peak_memory_bytes: Some(5),
                output_bytes: Some(6),
            },
        }));
        assert_eq!(end["type"], "end");
        assert_eq!(end["exit_code"], 3);
        assert_eq!(end["reason"], "exited");
        assert_eq!(end["cpu_ms"], 4);
        assert_eq!(end["output_bytes"], 6);
        let error = message(Frame::Error(crate::protocol::ErrorMsg::new(
            crate::protocol::ErrorCode::Busy,
            "full",
        )));
        assert_eq!(
            error,
            serde_json::json!({"type":"error","code":"busy","message":"full"})
        );
    }

    #[test]
    fn server_frames_that_cannot_be_messages_are_refused() {
        assert_eq!(frame_to_message(&[]), Err(MappingError::EmptyFrame));
        assert_eq!(
            frame_to_message(&[0x01]),
            Err(MappingError::UnknownFrame(0x01))
        );
        assert_eq!(
            frame_to_message(&[0x99]),
            Err(MappingError::UnknownFrame(0x99))
        );
        for body in [
            &[0x86, 0, 0][..],
            &[0x87, b'['],
            &[0x81, b'x'],
            &[0x8c, 0],
            &[0x89, b'['],
            &[0x8b, b'"'],
        ] {
            assert!(
                matches!(frame_to_message(body), Err(MappingError::BadPayload { .. })),
                "{body:?}"
            );
        }
        assert_eq!(frame_to_message(b"\x82{}").unwrap(), r#"{"type":"queued"}"#);
    }

    #[test]
    fn a_round_trip_both_ways_keeps_every_byte() {
        // Client direction: frame -> message as a browser would write it -> same frame.
        for data in [
            vec![],
            vec![0u8, 1, 254, 255],
            (0..=255u8).collect::<Vec<_>>(),
        ] {
            let text = format!(r#"{{"type":"stdin","data":"{}"}}"#, BASE64.encode(&data));
            let bytes = message_to_frame(&text).unwrap();
            assert_eq!(&bytes[5..], &data[..]);
            // Server direction: a stdout frame of the same bytes decodes back to them.
            let mut body = vec![0x84];
            body.extend_from_slice(&data);
            let v: Value = serde_json::from_str(&frame_to_message(&body).unwrap()).unwrap();
            assert_eq!(BASE64.decode(v["data"].as_str().unwrap()).unwrap(), data);
        }
    }
}
