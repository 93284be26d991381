// e2ee.js: end-to-end encryption of media for sfu-client.js (design: docs/e2ee.md).
//
// The page derives keys (WebCrypto), owns one worker (e2ee-worker.js) that encrypts every frame
// we send and decrypts every frame we receive, and attaches that worker to each RTCRtpSender
// and RTCRtpReceiver. Frames are RFC 9605 SFrame ciphertexts behind a short clear codec prefix;
// the server forwards them without being able to read them.
//
//   const e2ee = new E2eeSession({ room: "demo" });
//   await e2ee.setKey("correct horse battery staple", 0);   // a passphrase shared out of band
//   const pc = new RTCPeerConnection({ ...e2ee.peerConnectionConfig });
//   e2ee.attachSender(transceiver.sender, "video");          // and attachReceiver(...)

/** Bump when the derivation or frame format changes: old and new clients would not interoperate. */
export const E2EE_VERSION = 1;
/** PBKDF2-HMAC-SHA256 iterations for passphrases (OWASP's 2023 figure for this hash). */
export const PBKDF2_ITERATIONS = 600000;
/** Prefix of the per-room PBKDF2 salt: salt = SHA-256(prefix || UTF-8 room name). */
export const SALT_PREFIX = "sfu e2ee v1 passphrase salt\u0000";
const RAW_KEY_MIN_BYTES = 16;
const STATS_TIMEOUT_MS = 5000;

export class E2eeError extends Error {
  constructor(code, message) {
    super(message);
    this.name = "E2eeError";
    this.code = code;
  }
}

/**
 * Which insertable-streams API this browser has: "script" (RTCRtpScriptTransform, the standard
 * one), "streams" (Chromium's older createEncodedStreams), or null (no E2EE possible).
 */
export function e2eeApi() {
  if (typeof window === "undefined" || typeof Worker === "undefined") return null;
  if (typeof window.RTCRtpScriptTransform === "function") return "script";
  const sender = window.RTCRtpSender && window.RTCRtpSender.prototype;
  if (sender && typeof sender.createEncodedStreams === "function") return "streams";
  return null;
}

/**
 * The 32-byte base key for a passphrase in a room: PBKDF2-HMAC-SHA256 over the NFC-normalized
 * passphrase with the salt SHA-256(SALT_PREFIX || room), as a non-extractable HKDF key.
 * Raw key material (16 bytes or more, e.g. from a key service) is used as the base key as is.
 */
export async function deriveBaseKey(material, room) {
  const subtle = crypto.subtle;
  if (typeof material === "string") {
    if (!material) throw new E2eeError("bad_key", "the passphrase is empty");
    const enc = new TextEncoder();
    const salt = await subtle.digest("SHA-256", enc.encode(SALT_PREFIX + room));
    const password = await subtle.importKey("raw", enc.encode(material.normalize("NFC")), "PBKDF2", false, [
      "deriveBits",
    ]);
    const bits = await subtle.deriveBits(
      { name: "PBKDF2", hash: "SHA-256", salt, iterations: PBKDF2_ITERATIONS },
      password,
      256,
    );
    return subtle.importKey("raw", bits, "HKDF", false, ["deriveBits"]);
  }
  let bytes = null;
  if (material instanceof ArrayBuffer) bytes = new Uint8Array(material);
  else if (ArrayBuffer.isView(material)) bytes = new Uint8Array(material.buffer, material.byteOffset, material.byteLength);
  if (!bytes || bytes.byteLength < RAW_KEY_MIN_BYTES) {
    throw new E2eeError("bad_key", `a key is a passphrase or at least ${RAW_KEY_MIN_BYTES} random bytes`);
  }
  return subtle.importKey("raw", bytes, "HKDF", false, ["deriveBits"]);
}

/** One meeting's encryption: a key ring, a worker, and the senders/receivers it transforms. */
export class E2eeSession {
  /**
   * @param {object} options
   * @param {string} options.room room name (salts passphrase derivation)
   * @param {"script"|"streams"} [options.api] force one API (tests); default: the best available
   * @param {string|URL} [options.workerUrl] default: e2ee-worker.js next to this module
   */
  constructor({ room, api, workerUrl } = {}) {
    if (typeof room !== "string") throw new TypeError("E2eeSession: `room` is required");
    const available = e2eeApi();
    const hasStreams = !!(window.RTCRtpSender && "createEncodedStreams" in window.RTCRtpSender.prototype);
    this.api = api || available;
    const usable = this.api === "script" ? available === "script" : this.api === "streams" && hasStreams;
    if (!usable) {
      throw new E2eeError("e2ee_unsupported", "this browser cannot encrypt media end to end (no encoded transforms)");
    }
    this.room = room;
    this.keyId = null; // the key id we send with
    this.keyIds = []; // the key ids we hold, oldest first (the worker keeps the last 4)
    this._nextId = 1;
    this._replies = new Map();
    this._attached = new WeakSet();
    this._lastStats = null;
    this.worker = new Worker(workerUrl || new URL("./e2ee-worker.js", import.meta.url), { name: "sfu-e2ee" });
    this.worker.addEventListener("message", (event) => {
      const msg = event.data || {};
      const waiter = this._replies.get(msg.id);
      if (!waiter) return;
      this._replies.delete(msg.id);
      clearTimeout(waiter.timer);
      waiter.resolve(msg);
    });
  }

  /** RTCPeerConnection options this session needs (createEncodedStreams must be opted into). */
  get peerConnectionConfig() {
    return this.api === "streams" ? { encodedInsertableStreams: true } : {};
  }

  /** True once a key to send with is installed. */
  get hasKey() {
    return this.keyId !== null;
  }

  _ask(message, transfer = []) {
    if (!this.worker) return Promise.reject(new E2eeError("closed", "this E2EE session is closed"));
    const id = this._nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._replies.delete(id);
        reject(new E2eeError("timeout", `the E2EE worker did not answer ${message.type}`));
      }, STATS_TIMEOUT_MS);
      this._replies.set(id, { resolve, timer });
      this.worker.postMessage({ ...message, id }, transfer);
    });
  }

  /**
   * Install a key: a passphrase or raw key bytes, under a key id 0-255. With `current` (the
   * default) we send with it from now on; receivers accept every key id they hold, so during a
   * rotation frames under the previous id still decrypt.
   */
  async setKey(material, keyId = 0, { current = true } = {}) {
    if (!Number.isInteger(keyId) || keyId < 0 || keyId > 255) throw new E2eeError("bad_key", "keyId must be 0-255");
    const base = await deriveBaseKey(material, this.room);
    const reply = await this._ask({ type: "setKey", keyId, key: base, current });
    this.keyIds = [...this.keyIds.filter((k) => k !== keyId), keyId].slice(-4);
    this.keyId = reply.sendKeyId;
    return this.keyId;
  }

  _attach(target, operation, kind) {
    if (!target || this._attached.has(target)) return;
    this._attached.add(target);
    const options = { operation, kind };
    if (this.api === "script") {
      target.transform = new RTCRtpScriptTransform(this.worker, options);
      return;
    }
    const { readable, writable } = target.createEncodedStreams();
    this.worker.postMessage({ type: "streams", readable, writable, options }, [readable, writable]);
  }

  /** Encrypt everything this sender sends (call right after addTransceiver). */
  attachSender(sender, kind) {
    this._attach(sender, "encrypt", kind);
  }

  /** Decrypt everything this receiver receives; undecryptable frames are dropped and counted. */
  attachReceiver(receiver, kind) {
    this._attach(receiver, "decrypt", kind);
  }

  /**
   * Counters from the worker: {encrypted, decrypted, failed, failedNoKey, replayed, dropped,
   * byKey, sentByKey, sendKeyId, keyIds}. After close(), the last counters read.
   */
  async stats() {
    if (!this.worker) return this._lastStats;
    const reply = await this._ask({ type: "stats" });
    this._lastStats = reply.stats;
    return reply.stats;
  }

  close() {
    if (!this.worker) return;
    this.worker.terminate();
    this.worker = null;
    for (const [, waiter] of this._replies) {
      clearTimeout(waiter.timer);
      waiter.resolve({ stats: this._lastStats, sendKeyId: this.keyId });
    }
    this._replies.clear();
  }
}

export default E2eeSession;
