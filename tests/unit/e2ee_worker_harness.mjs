// Runs sfu/web/e2ee-worker.js under Node (WebCrypto and streams are built in) with a stand-in
// for the worker global, pushes synthetic frames through its transforms and prints JSON for
// tests/unit/test_e2ee_worker.py. Usage: node e2ee_worker_harness.mjs <worker.js> <e2ee.js>

import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";
import vm from "node:vm";

const [workerPath, e2eePath] = process.argv.slice(2);

// -- the worker's global: addEventListener / postMessage
const listeners = {};
const replies = [];
const self = {
  addEventListener: (type, fn) => (listeners[type] = fn),
  postMessage: (msg) => replies.push(msg),
};
vm.runInThisContext(`(function (self) {\n${readFileSync(workerPath, "utf8")}\n})`)(self);
const { deriveBaseKey } = await import(pathToFileURL(e2eePath).href);

const ROOM = "unit";
const hex = (buf) => Buffer.from(buf).toString("hex");
const fromHex = (s) => Uint8Array.from(Buffer.from(s, "hex")).buffer;

function frame(bytes, mimeType) {
  return { data: bytes, type: "delta", getMetadata: () => (mimeType ? { mimeType } : {}) };
}

/** Run frames through one transform (as RTCRtpScriptTransform would) and collect the output. */
async function transform(operation, kind, frames) {
  const out = [];
  const readable = new ReadableStream({
    start(controller) {
      for (const f of frames) controller.enqueue(f);
      controller.close();
    },
  });
  let done;
  const finished = new Promise((resolve) => (done = resolve));
  const writable = new WritableStream({
    write: (f) => out.push(f),
    close: () => done(),
  });
  listeners.rtctransform({ transformer: { readable, writable, options: { operation, kind } } });
  await finished;
  return out;
}

function stats() {
  listeners.message({ data: { type: "stats", id: "s" } });
  return replies.pop().stats;
}

function setKey(keyId, key, current = true) {
  listeners.message({ data: { type: "setKey", id: "k", keyId, key, current } });
  return replies.pop();
}

const result = {};
const k0 = await deriveBaseKey("correct horse battery staple", ROOM);

// Nothing leaves in clear before a key exists.
result.noKey = (await transform("encrypt", "video", [frame(new Uint8Array([1, 2, 3, 4]).buffer)])).length;
setKey(0, k0);

// VP8 keyframe (P bit 0), delta frames (P bit 1), Opus; plaintexts are given in hex.
const plain = JSON.parse(process.env.PLAINTEXTS);
const video = await transform(
  "encrypt",
  "video",
  plain.video.map((h) => frame(fromHex(h), "video/VP8")),
);
const audio = await transform(
  "encrypt",
  "audio",
  plain.audio.map((h) => frame(fromHex(h))),
);
// A codec the format does not cover is dropped, never sent.
const h264 = await transform("encrypt", "video", [frame(fromHex("0000000167"), "video/H264")]);
result.video = video.map((f) => hex(f.data));
result.audio = audio.map((f) => hex(f.data));
result.h264 = h264.length;
result.afterSend = stats();

// Receive: the originals, a replay, a tampered clear byte, a truncated frame, an unencrypted frame.
const enc = video.map((f) => new Uint8Array(f.data));
const tampered = enc[0].slice();
tampered[6] ^= 0x01; // the keyframe width, in clear but authenticated
const received = await transform("decrypt", "video", [
  frame(tampered.buffer, "video/VP8"), // first: a replay check would also catch it later
  ...enc.map((b) => frame(b.slice().buffer, "video/VP8")),
  frame(enc[1].slice().buffer, "video/VP8"), // replay
  frame(enc[2].slice(0, 12).buffer, "video/VP8"), // truncated
  frame(fromHex(plain.unencrypted), "video/VP8"), // never encrypted
  frame(new ArrayBuffer(0), "video/VP8"), // empty (RTP padding): nothing to decrypt
]);
result.decrypted = received.map((f) => hex(f.data));
result.afterReceive = stats();

// Rotation: frames under key id 1 need key 1; the ring keeps the last four key ids.
const k1 = await deriveBaseKey("a new passphrase", ROOM);
setKey(1, k1);
const underKey1 = await transform("encrypt", "audio", [frame(fromHex(plain.audio[0]))]);
result.underKey1 = hex(underKey1[0].data);
for (const id of [2, 3, 4]) setKey(id, k1, false);
const afterEviction = await transform("decrypt", "audio", [
  frame(new Uint8Array(audio[0].data).slice().buffer), // key id 0: evicted by now
  frame(new Uint8Array(underKey1[0].data).slice().buffer),
]);
result.afterEviction = afterEviction.map((f) => hex(f.data));
result.final = stats();
console.log(JSON.stringify(result));
