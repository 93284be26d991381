// e2ee-worker.js: the frame transform of end-to-end encryption (see docs/e2ee.md).
//
// Runs in a dedicated worker started by e2ee.js. Every encoded audio/video frame of every
// sender passes through an `encryptor` before RTP packetization, and every received frame
// through a `decryptor` after depacketization, so the SFU only ever forwards ciphertext. The frame format
// is RFC 9605 (SFrame) with AES_128_GCM_SHA256_128, preceded by the few codec bytes that must
// stay readable (authenticated as associated data):
//
//   | clear prefix (0, 3 or 10 bytes) | SFrame header: config, KID, CTR | ciphertext | 16-byte tag |
//
// Frames come in through RTCRtpScriptTransform (`rtctransform` events) or, in browsers that only
// have the older createEncodedStreams(), as transferred streams posted by e2ee.js. Keys arrive
// as non-extractable HKDF CryptoKeys (`setKey` messages); this worker never sees a passphrase.

"use strict";

/** RFC 9605 §4.5 cipher suite AES_128_GCM_SHA256_128: 16-byte key, 12-byte nonce, 16-byte tag. */
const CIPHER_SUITE = 0x0004;
const KEY_BITS = 128;
const NONCE_BYTES = 12;
const TAG_BYTES = 16;
/** Key ids (0-255) kept for receiving: the current one and up to three before it. */
const MAX_KEYS = 4;
/** Per-sender keys derived from (base key, KID); each sender has its own KID. */
const MAX_DERIVED = 256;
/**
 * A received frame whose CTR is this far behind the highest seen (same KID) counts as a replay.
 * Frames can complete out of order after a loss; 1024 counter values are over ten seconds even
 * with three simulcast layers sharing one counter, far more than any jitter buffer waits.
 */
const REPLAY_WINDOW = 1024n;
/** KIDs whose replay window a receiver remembers (senders it heard recently). */
const MAX_WINDOWS = 32;
/** VP8 payload header bytes left in clear (RFC 6386 §9.1): 3-byte frame tag, + 7 on keyframes. */
const VP8_CLEAR_KEY = 10;
const VP8_CLEAR_DELTA = 3;

const encoder = new TextEncoder();
const KEY_LABEL = encoder.encode("SFrame 1.0 Secret key ");
const SALT_LABEL = encoder.encode("SFrame 1.0 Secret salt ");

// ------------------------------------------------------------------ state

/** keyId -> {base: CryptoKey (HKDF), generation} */
const keys = new Map();
let sendKeyId = null;
let generation = 0;
/** `${generation}:${kid}` -> Promise<{key: CryptoKey (AES-GCM), salt: Uint8Array}> */
const derived = new Map();
/** Receive transforms that may want a keyframe once a new key makes their frames readable. */
const receivers = new Set();

const stats = {
  encrypted: 0, // frames sent encrypted
  decrypted: 0, // frames received and authenticated
  failed: 0, // received frames dropped: no key for their KID, wrong key, malformed or tampered
  failedNoKey: 0, // ... of which carried a key id we do not hold
  failedMalformed: 0, // ... of which had no SFrame header or were too short to hold one
  empty: 0, // received frames of zero length (RTP padding), passed on as they are
  replayed: 0, // received frames dropped as repeats of a (KID, CTR) already received, or too old
  dropped: 0, // frames not sent: no key yet, or a codec this format does not cover
  byKey: {}, // keyId -> frames decrypted with it
  recentFailures: [], // the last few failures: {reason, kind, size, head} (head: first bytes, hex)
  sentByKey: {}, // keyId -> frames encrypted with it
};

// ------------------------------------------------------------------ byte helpers

function concat(...parts) {
  let n = 0;
  for (const p of parts) n += p.byteLength;
  const out = new Uint8Array(n);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.byteLength;
  }
  return out;
}

/** A non-negative BigInt as big-endian bytes: exactly `width` bytes, or as few as it takes. */
function uintBytes(value, width = 0) {
  const out = [];
  let v = value;
  while (v > 0n || out.length === 0) {
    out.unshift(Number(v & 0xffn));
    v >>= 8n;
  }
  while (out.length < width) out.unshift(0);
  return Uint8Array.from(out);
}

function readUint(bytes, at, length) {
  let v = 0n;
  for (let i = 0; i < length; i++) v = (v << 8n) | BigInt(bytes[at + i]);
  return v;
}

// ------------------------------------------------------------------ SFrame header (RFC 9605 §4.3)

/**
 * Config byte |X|K K K|Y|C C C|, then KID, then CTR. A value below 8 sits in the config byte
 * itself (X=0 / Y=0); a larger one follows it in K+1 (C+1) big-endian bytes, as few as it takes.
 */
function encodeHeader(kid, ctr) {
  let config = 0;
  const tail = [];
  if (kid < 8n) {
    config |= Number(kid) << 4;
  } else {
    const b = uintBytes(kid);
    config |= 0x80 | ((b.length - 1) << 4);
    tail.push(b);
  }
  if (ctr < 8n) {
    config |= Number(ctr);
  } else {
    const b = uintBytes(ctr);
    config |= 0x08 | (b.length - 1);
    tail.push(b);
  }
  return concat(Uint8Array.of(config), ...tail);
}

/** {kid, ctr, length} of the header at bytes[at], or null if it runs past the end. */
function decodeHeader(bytes, at) {
  if (at >= bytes.length) return null;
  const config = bytes[at];
  let pos = at + 1;
  let kid;
  if (config & 0x80) {
    const n = ((config >> 4) & 0x07) + 1;
    if (pos + n > bytes.length) return null;
    kid = readUint(bytes, pos, n);
    pos += n;
  } else {
    kid = BigInt((config >> 4) & 0x07);
  }
  let ctr;
  if (config & 0x08) {
    const n = (config & 0x07) + 1;
    if (pos + n > bytes.length) return null;
    ctr = readUint(bytes, pos, n);
    pos += n;
  } else {
    ctr = BigInt(config & 0x07);
  }
  return { kid, ctr, length: pos - at };
}

// ------------------------------------------------------------------ keys

/** The key id (0-255) is the low byte of a KID; the upper 56 bits name the sender. */
const keyIdOf = (kid) => Number(kid & 0xffn);

/** RFC 9605 §4.4.2: sframe_key and sframe_salt for one KID, from the key id's base key. */
function deriveForKid(kid) {
  const entry = keys.get(keyIdOf(kid));
  if (!entry) return null;
  const cacheKey = `${entry.generation}:${kid}`;
  let pending = derived.get(cacheKey);
  if (pending) return pending;
  const suffix = concat(uintBytes(kid, 8), uintBytes(BigInt(CIPHER_SUITE), 2));
  // WebCrypto HKDF = Extract(salt, IKM) then Expand(info): with an empty salt this is exactly
  // HKDF-Extract("", base_key) followed by HKDF-Expand(secret, label, length) of the RFC.
  const hkdf = (label, bits) =>
    crypto.subtle.deriveBits(
      { name: "HKDF", hash: "SHA-256", salt: new Uint8Array(0), info: concat(label, suffix) },
      entry.base,
      bits,
    );
  pending = (async () => {
    const [keyBits, saltBits] = await Promise.all([hkdf(KEY_LABEL, KEY_BITS), hkdf(SALT_LABEL, NONCE_BYTES * 8)]);
    const key = await crypto.subtle.importKey("raw", keyBits, { name: "AES-GCM" }, false, ["encrypt", "decrypt"]);
    return { key, salt: new Uint8Array(saltBits) };
  })();
  derived.set(cacheKey, pending);
  pending.catch(() => derived.delete(cacheKey));
  if (derived.size > MAX_DERIVED) derived.delete(derived.keys().next().value);
  return pending;
}

/** nonce = sframe_salt XOR CTR (CTR big-endian, left-padded to the nonce size). */
function nonceFor(salt, ctr) {
  const nonce = uintBytes(ctr, NONCE_BYTES);
  for (let i = 0; i < NONCE_BYTES; i++) nonce[i] ^= salt[i];
  return nonce;
}

function setKey(keyId, base, current) {
  generation += 1;
  keys.delete(keyId); // re-insert: the map's order is the order keys were set
  keys.set(keyId, { base, generation });
  while (keys.size > MAX_KEYS) {
    const oldest = keys.keys().next().value;
    if (oldest === keyId) break;
    keys.delete(oldest);
  }
  for (const cacheKey of [...derived.keys()]) {
    const gen = Number(cacheKey.split(":")[0]);
    if (![...keys.values()].some((k) => k.generation === gen)) derived.delete(cacheKey);
  }
  if (current || sendKeyId === null || !keys.has(sendKeyId)) sendKeyId = keyId;
  // Receivers that dropped frames may now be able to read them: ask for a fresh keyframe.
  for (const r of receivers) {
    if (r.failedSinceKey && r.transformer && typeof r.transformer.sendKeyFrameRequest === "function") {
      r.transformer.sendKeyFrameRequest().catch(() => {});
    }
    r.failedSinceKey = false;
  }
}

// ------------------------------------------------------------------ codec rules

/**
 * How many leading bytes of a frame stay in clear, or -1 if this format does not cover the
 * codec. Opus: none (the SFU reads no audio payload byte; levels come from an RTP header
 * extension). VP8: the payload header of RFC 6386 §9.1, which the SFU reads for the keyframe bit
 * and the receiving browser's depacketizer reads for keyframe size before our transform runs.
 */
function clearBytes(kind, frame, bytes) {
  if (kind === "audio") return 0;
  let mime = "";
  try {
    const meta = frame.getMetadata();
    mime = (meta && meta.mimeType ? meta.mimeType : "").toLowerCase();
  } catch (err) {
    // no metadata: the client negotiates VP8 first
  }
  if (mime && mime !== "video/vp8") return -1;
  if (bytes.length === 0) return 0;
  const n = (bytes[0] & 0x01) === 0 ? VP8_CLEAR_KEY : VP8_CLEAR_DELTA; // P bit 0: keyframe
  return Math.min(n, bytes.length);
}

// ------------------------------------------------------------------ transforms

function randomSenderId() {
  const b = crypto.getRandomValues(new Uint8Array(7));
  return readUint(b, 0, 7); // 56 random bits
}

/**
 * One sending track: its own random 56-bit sender id goes into every KID, and its counter
 * increases by one per frame over all simulcast layers, so (KID, CTR) never repeats.
 */
function encryptor(kind) {
  const senderId = randomSenderId();
  let ctr = 0n;
  return async (frame, controller) => {
    if (sendKeyId === null || !keys.has(sendKeyId)) {
      stats.dropped += 1; // never send in clear
      return;
    }
    const keyId = sendKeyId;
    const bytes = new Uint8Array(frame.data);
    const n = clearBytes(kind, frame, bytes);
    if (n < 0) {
      stats.dropped += 1;
      return;
    }
    const kid = (senderId << 8n) | BigInt(keyId);
    const count = ctr; // taken before any await: never used twice, even if this frame fails
    ctr += 1n;
    const clear = bytes.subarray(0, n);
    const header = encodeHeader(kid, count);
    try {
      const { key, salt } = await deriveForKid(kid);
      const sealed = await crypto.subtle.encrypt(
        { name: "AES-GCM", iv: nonceFor(salt, count), additionalData: concat(header, clear), tagLength: TAG_BYTES * 8 },
        key,
        bytes.subarray(n),
      );
      frame.data = concat(clear, header, new Uint8Array(sealed)).buffer;
    } catch (err) {
      stats.dropped += 1;
      return;
    }
    stats.encrypted += 1;
    stats.sentByKey[keyId] = (stats.sentByKey[keyId] || 0) + 1;
    controller.enqueue(frame);
  };
}

/**
 * Replay protection per receiver and KID, like SRTP's: a CTR is accepted once, and only
 * within REPLAY_WINDOW of the highest seen (frames may complete out of order after a loss).
 */
const isReplay = (w, ctr) => !!w && (ctr + REPLAY_WINDOW <= w.highest || w.seen.has(ctr));

/** Record an authenticated frame (only those: forged KIDs must not evict real windows). */
function remember(state, kid, ctr) {
  let w = state.windows.get(kid);
  if (!w) {
    w = { highest: -1n, seen: new Set() };
    state.windows.set(kid, w);
    if (state.windows.size > MAX_WINDOWS) state.windows.delete(state.windows.keys().next().value);
  }
  w.seen.add(ctr);
  if (ctr <= w.highest) return;
  w.highest = ctr;
  if (w.seen.size > 2 * Number(REPLAY_WINDOW)) {
    for (const c of w.seen) if (c + REPLAY_WINDOW <= ctr) w.seen.delete(c);
  }
}

/** One receiving track: frames that do not authenticate under a key we hold are dropped. */
function decryptor(kind, state) {
  const fail = (reason, bytes) => {
    const head = Array.from(bytes.subarray(0, 12), (b) => b.toString(16).padStart(2, "0")).join("");
    stats.recentFailures = [...stats.recentFailures.slice(-7), { reason, kind, size: bytes.length, head }];
    stats.failed += 1;
    if (reason === "noKey") stats.failedNoKey += 1;
    if (reason === "malformed") stats.failedMalformed += 1;
    state.failedSinceKey = true;
  };
  return async (frame, controller) => {
    const bytes = new Uint8Array(frame.data);
    if (bytes.length === 0) {
      // Chromium hands an audio RTP packet without payload (padding) over as an empty frame:
      // there is nothing in it to decrypt or to reveal, and the jitter buffer counts it.
      stats.empty += 1;
      controller.enqueue(frame);
      return;
    }
    const n = clearBytes(kind, frame, bytes);
    const header = n < 0 ? null : decodeHeader(bytes, n);
    if (!header || bytes.length < n + header.length + TAG_BYTES) return fail("malformed", bytes);
    const pending = deriveForKid(header.kid);
    if (!pending) return fail("noKey", bytes);
    if (isReplay(state.windows.get(header.kid), header.ctr)) {
      stats.replayed += 1; // a duplicate (benign, or replayed by someone on the path): drop it
      return;
    }
    try {
      const { key, salt } = await pending;
      const clear = bytes.subarray(0, n);
      const headerBytes = bytes.subarray(n, n + header.length);
      const opened = await crypto.subtle.decrypt(
        {
          name: "AES-GCM",
          iv: nonceFor(salt, header.ctr),
          additionalData: concat(headerBytes, clear),
          tagLength: TAG_BYTES * 8,
        },
        key,
        bytes.subarray(n + header.length),
      );
      frame.data = concat(clear, new Uint8Array(opened)).buffer;
    } catch (err) {
      return fail("auth", bytes); // wrong key, or altered on the way
    }
    remember(state, header.kid, header.ctr); // frames pass one at a time: none came meanwhile
    const keyId = keyIdOf(header.kid);
    stats.decrypted += 1;
    stats.byKey[keyId] = (stats.byKey[keyId] || 0) + 1;
    controller.enqueue(frame);
  };
}

function run(readable, writable, options, transformer) {
  const kind = options && options.kind === "audio" ? "audio" : "video";
  let transform;
  let state = null;
  if (options && options.operation === "encrypt") {
    transform = encryptor(kind);
  } else {
    state = { transformer, failedSinceKey: false, windows: new Map() };
    receivers.add(state);
    transform = decryptor(kind, state);
  }
  readable
    .pipeThrough(new TransformStream({ transform }))
    .pipeTo(writable)
    .catch(() => {})
    .finally(() => state && receivers.delete(state));
}

// RTCRtpScriptTransform: one event per sender/receiver given this worker.
self.addEventListener("rtctransform", (event) => {
  const t = event.transformer;
  run(t.readable, t.writable, t.options, t);
});

self.addEventListener("message", (event) => {
  const msg = event.data || {};
  switch (msg.type) {
    case "setKey":
      setKey(msg.keyId, msg.key, msg.current !== false);
      self.postMessage({ type: "keySet", id: msg.id, sendKeyId });
      break;
    case "streams": // createEncodedStreams() fallback: the page transferred the streams here
      run(msg.readable, msg.writable, msg.options, null);
      break;
    case "stats":
      self.postMessage({
        type: "stats",
        id: msg.id,
        stats: {
          ...stats,
          byKey: { ...stats.byKey },
          sentByKey: { ...stats.sentByKey },
          sendKeyId,
          keyIds: [...keys.keys()],
        },
      });
      break;
    default:
      break;
  }
});
