// A werift WHEP viewer for the integration tests (tests/integration/test_codecs_werift.py).
//
//   node whep_viewer.mjs WHEP_URL TOKEN SECONDS
//
// It offers to receive audio (Opus) and video (VP8, H.264, VP9, AV1), POSTs the offer once
// ICE gathering is complete (loopback only), and prints one JSON object a line: the answer's
// status, "connected" when its connection comes up, and "keyframe" with the codec and payload
// type when the first packet that starts a video keyframe (VP8, VP9, H.264) arrives; then it
// closes. werift
// sends no PLI of its own, so this viewer never asks for a keyframe. Times are seconds on one
// monotonic clock. It exits on its own after SECONDS at the latest.
import { RTCPeerConnection, RTCRtpCodecParameters } from "werift";

const [url, token, seconds] = process.argv.slice(2);
const now = () => performance.now() / 1000;
const say = (event) => process.stdout.write(JSON.stringify(event) + "\n");
const deadline = setTimeout(() => {
  say({ event: "timeout", t: now() });
  process.exit(2);
}, Number(seconds) * 1000);

const feedback = [{ type: "nack" }, { type: "nack", parameter: "pli" }];
const video = (mimeType, parameters) =>
  new RTCRtpCodecParameters({ mimeType, clockRate: 90000, rtcpFeedback: feedback, parameters });

/** Whether a VP8 payload (RFC 7741 §4.2-4.3) is the first packet of a keyframe. */
function vp8Keyframe(p) {
  if (p.length < 1) return false;
  const start = (p[0] & 0x10) !== 0 && (p[0] & 0x0f) === 0;
  let i = 1;
  if (p[0] & 0x80) {
    const x = p[i++];
    if (x & 0x80) i += p[i] & 0x80 ? 2 : 1; // picture id, 7 or 15 bits
    if (x & 0x40) i += 1; // TL0PICIDX
    if (x & 0x30) i += 1; // TID / KEYIDX
  }
  return start && i < p.length && (p[i] & 0x01) === 0;
}

/** Whether a VP9 payload (RFC 9628 §4.2) begins a keyframe: B set, P clear, spatial layer 0. */
function vp9Keyframe(p) {
  if (p.length < 1) return false;
  const begins = (p[0] & 0x08) !== 0;
  const predicted = (p[0] & 0x40) !== 0;
  if (!begins || predicted) return false;
  if (!(p[0] & 0x20)) return true; // no layer indices: a single spatial layer
  let i = 1;
  if (p[0] & 0x80) i += p[1] & 0x80 ? 2 : 1; // picture id
  return i < p.length && ((p[i] >> 1) & 0x07) === 0; // SID of the layer indices
}

/** Whether an H.264 payload (RFC 6184 §5) starts an IDR picture or carries an SPS. */
function h264Keyframe(p) {
  if (p.length < 2) return false;
  const type = p[0] & 0x1f;
  if (type === 5 || type === 7) return true;
  if (type === 24) {
    for (let i = 1; i + 2 < p.length; ) {
      const size = (p[i] << 8) | p[i + 1];
      const nal = p[i + 2] & 0x1f;
      if (nal === 5 || nal === 7) return true;
      i += 2 + size;
    }
    return false;
  }
  if (type === 28) return (p[1] & 0x80) !== 0 && [5, 7].includes(p[1] & 0x1f);
  return false;
}

const pc = new RTCPeerConnection({
  iceServers: [],
  iceUseIpv6: false,
  iceInterfaceAddresses: { udp4: "127.0.0.1" },
  iceAdditionalHostAddresses: ["127.0.0.1"],
  iceFilterCandidatePair: (pair) => pair.localCandidate.host === "127.0.0.1",
  codecs: {
    audio: [
      new RTCRtpCodecParameters({ mimeType: "audio/opus", clockRate: 48000, channels: 2 }),
    ],
    video: [
      video("video/VP8"),
      video("video/H264", "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"),
      video("video/H264", "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f"),
      video("video/VP9", "profile-id=0"),
      video("video/AV1"),
    ],
  },
});

/** Payload type -> "video/NAME" from the answer's rtpmaps (werift's track.codec names only
 * the first answered codec, whatever the packets carry). */
const answered = new Map();
let seen = false;
pc.onTrack.subscribe((track) => {
  say({ event: "track", kind: track.kind, t: now() });
  if (track.kind !== "video") return;
  track.onReceiveRtp.subscribe((rtp) => {
    if (seen) return;
    const pt = rtp.header.payloadType;
    const codec = answered.get(pt) || "";
    const name = (codec.split("/")[1] || "").toLowerCase();
    const read = { vp8: vp8Keyframe, vp9: vp9Keyframe, h264: h264Keyframe }[name];
    if (!read) return; // a codec this viewer does not read
    const key = read(rtp.payload);
    if (!key) return;
    seen = true;
    say({ event: "keyframe", t: now(), codec, payloadType: pt });
    clearTimeout(deadline);
    pc.close().then(() => process.exit(0));
  });
});
pc.connectionStateChange.subscribe((state) => say({ event: "state", state, t: now() }));

pc.addTransceiver("audio", { direction: "recvonly" });
pc.addTransceiver("video", { direction: "recvonly" });
await pc.setLocalDescription(await pc.createOffer());
if (pc.iceGatheringState !== "complete") {
  await new Promise((resolve) =>
    pc.iceGatheringStateChange.subscribe((state) => state === "complete" && resolve()),
  );
}
const response = await fetch(url, {
  method: "POST",
  headers: { "Content-Type": "application/sdp", Authorization: `Bearer ${token}` },
  body: pc.localDescription.sdp,
});
const answer = await response.text();
say({ event: "answer", status: response.status, t: now() });
if (response.status !== 201) {
  say({ event: "error", body: answer.slice(0, 300) });
  process.exit(1);
}
for (const match of answer.matchAll(/^a=rtpmap:(\d+) ([A-Za-z0-9-]+)\/90000/gm)) {
  answered.set(Number(match[1]), `video/${match[2]}`);
}
await pc.setRemoteDescription({ type: "answer", sdp: answer });
