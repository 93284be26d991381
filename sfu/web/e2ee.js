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
/** HKDF info of the chat key: distinct from every media key the worker derives from the base key. */
export const CHAT_KEY_INFO = "sfu e2ee v1 chat";
/** An encrypted chat message on the wire: `e2ee1:<key id>:<base64(IV || AES-GCM ciphertext+tag)>`. */
export const CHAT_PREFIX = "e2ee1:";
const CHAT_IV_BYTES = 12;
const CHAT_KEYS_KEPT = 4;
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

/** The AES-GCM key for chat under one base key (HKDF-SHA256, info CHAT_KEY_INFO). */
export async function deriveChatKey(base) {
  const bits = await crypto.subtle.deriveBits(
    { name: "HKDF", hash: "SHA-256", salt: new Uint8Array(0), info: new TextEncoder().encode(CHAT_KEY_INFO) },
    base,
    256,
  );
  return crypto.subtle.importKey("raw", bits, "AES-GCM", false, ["encrypt", "decrypt"]);
}

function toBase64(bytes) {
  let text = "";
  for (const b of bytes) text += String.fromCharCode(b);
  return btoa(text);
}

function fromBase64(text) {
  const raw = atob(text);
  const out = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
  return out;
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
    this._chatKeys = new Map(); // key id -> AES-GCM chat key, the last CHAT_KEYS_KEPT installed
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
    const chatKey = await deriveChatKey(base);
    const reply = await this._ask({ type: "setKey", keyId, key: base, current });
    this._chatKeys.delete(keyId);
    this._chatKeys.set(keyId, chatKey);
    while (this._chatKeys.size > CHAT_KEYS_KEPT) this._chatKeys.delete(this._chatKeys.keys().next().value);
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

  _chatAad(keyId) {
    // Binds a ciphertext to this room and key id: it cannot be replayed into another room.
    return new TextEncoder().encode(`${CHAT_PREFIX}${this.room}\u0000${keyId}`);
  }

  /** Encrypt one chat message with the current key: the text the server may relay. */
  async encryptChat(text) {
    const keyId = this.keyId;
    const key = keyId === null ? null : this._chatKeys.get(keyId);
    if (!key) throw new E2eeError("no_key", "no end-to-end key to encrypt chat with");
    const iv = crypto.getRandomValues(new Uint8Array(CHAT_IV_BYTES));
    const sealed = new Uint8Array(
      await crypto.subtle.encrypt({ name: "AES-GCM", iv, additionalData: this._chatAad(keyId) }, key, new TextEncoder().encode(text)),
    );
    const wire = new Uint8Array(iv.length + sealed.length);
    wire.set(iv);
    wire.set(sealed, iv.length);
    return `${CHAT_PREFIX}${keyId}:${toBase64(wire)}`;
  }

  /** True when `text` is in the encrypted chat format (whether or not we hold its key). */
  isEncryptedChat(text) {
    return typeof text === "string" && text.startsWith(CHAT_PREFIX);
  }

  /** Decrypt a chat message from encryptChat; throws E2eeError when it does not decrypt. */
  async decryptChat(text) {
    const match = /^e2ee1:(\d{1,3}):([A-Za-z0-9+/=]+)$/.exec(text);
    if (!match) throw new E2eeError("bad_chat", "not an encrypted chat message");
    const keyId = Number(match[1]);
    const key = this._chatKeys.get(keyId);
    if (!key) throw new E2eeError("no_key", `no chat key ${keyId}`);
    let wire;
    try {
      wire = fromBase64(match[2]);
    } catch (err) {
      throw new E2eeError("bad_chat", "chat ciphertext is not base64");
    }
    if (wire.length < CHAT_IV_BYTES + 16) throw new E2eeError("bad_chat", "chat ciphertext too short");
    try {
      const plain = await crypto.subtle.decrypt(
        { name: "AES-GCM", iv: wire.subarray(0, CHAT_IV_BYTES), additionalData: this._chatAad(keyId) },
        key,
        wire.subarray(CHAT_IV_BYTES),
      );
      return new TextDecoder("utf-8", { fatal: true }).decode(plain);
    } catch (err) {
      throw new E2eeError("bad_chat", "chat message did not decrypt");
    }
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
