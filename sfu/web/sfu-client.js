// sfu-client.js: the browser side of this server's room protocol (docs/protocol.md).
//
// One WebSocket carries JSON signaling, one RTCPeerConnection carries all media, and the client
// is always the offerer: every change (publishing, subscribing, unsubscribing) becomes a new
// complete offer, and offers are strictly serialized, so there is never more than one in flight.
//
// No dependencies and no build step: import { Room } from "/sfu-client.js".

import { E2eeSession } from "./e2ee.js";

const PROTOCOL = 1;
const MAX_MESSAGE_BYTES = 64 * 1024;
const REQUEST_TIMEOUT_MS = 15000;
const PING_INTERVAL_MS = 25000;
/** How long ICE may stay `disconnected` before the client restarts it (a brief blip heals alone). */
const ICE_RESTART_DELAY_MS = 2000;
/** After a restart that did not bring ICE back, the next try. */
const ICE_RESTART_RETRY_MS = 5000;
/** While ICE is down, a ping must be answered this fast or the WebSocket counts as lost
 * (a dead TCP connection can take minutes to report itself). */
const SIGNALING_PROBE_MS = 3000;
/** Close code the client uses for a WebSocket it abandons: not a clean close, so the server
 * keeps our place for a resume. */
const CLOSE_SIGNALING_LOST = 4000;
const ICE_GATHERING_WAIT_MS = 1500;
const NEGOTIATION_DEBOUNCE_MS = 15;
/** Tile-size hints (docs/protocol.md, "Bandwidth, hints and stream state"): at most one `prefs`
 * per tile this often, so a window being resized sends a handful, not hundreds. */
const HINT_DEBOUNCE_MS = 500;
/** A layer serves a tile up to this much taller than itself (a slight upscale looks fine). */
const HINT_UPSCALE = 1.15;
/** The top layer's height when the publisher did not declare one. */
const ASSUMED_TOP_HEIGHT = 720;

/**
 * The highest simulcast layer a tile needs: the lowest whose height (layers halve downwards
 * from `topHeight`, as SIMULCAST_ENCODINGS scale them) covers `visibleHeight` device pixels;
 * null when only the top layer does (no cap).
 */
export function layerForHeight(visibleHeight, layerCount, topHeight = ASSUMED_TOP_HEIGHT) {
  for (let layer = 0; layer < layerCount - 1; layer++) {
    const height = topHeight / 2 ** (layerCount - 1 - layer);
    if (height * HINT_UPSCALE >= visibleHeight) return layer;
  }
  return null;
}

/** Simulcast layers, lowest first: the order the server lists them in a track's `layers`. */
export const SIMULCAST_ENCODINGS = Object.freeze([
  Object.freeze({ rid: "q", scaleResolutionDownBy: 4, maxBitrate: 150000 }),
  Object.freeze({ rid: "h", scaleResolutionDownBy: 2, maxBitrate: 500000 }),
  Object.freeze({ rid: "f", maxBitrate: 1500000 }),
]);

/** An error from the server (`error` reply) or from the connection; `.code` says which. */
export class SfuError extends Error {
  constructor(code, message, extra = {}) {
    super(message || code);
    this.name = "SfuError";
    this.code = code;
    Object.assign(this, extra);
  }
}

function defaultUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws`;
}

function websocketUrl(url) {
  if (!url) return defaultUrl();
  // Accept http(s) and relative URLs as well as ws(s) ones.
  const resolved = new URL(url, location.href);
  if (resolved.protocol === "http:") resolved.protocol = "ws:";
  else if (resolved.protocol === "https:") resolved.protocol = "wss:";
  return resolved.href;
}

const delay = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * The primary (media) SSRC the answer announces for each mid: the first of an `a=ssrc-group:FID`
 * line, else the first `a=ssrc:` line. Stats are matched by it, because a reused transceiver
 * still reports its previous stream (same mid, old SSRC) for a while.
 */
function answerSsrcs(sdp) {
  const out = new Map();
  for (const section of sdp.split(/\r?\nm=/).slice(1)) {
    const lines = section.split(/\r?\n/);
    const midLine = lines.find((l) => l.startsWith("a=mid:"));
    if (!midLine) continue;
    const fid = lines.find((l) => l.startsWith("a=ssrc-group:FID "));
    const first = lines.find((l) => l.startsWith("a=ssrc:"));
    const ssrc = fid ? fid.split(" ")[1] : first ? first.slice("a=ssrc:".length).split(" ")[0] : null;
    if (ssrc !== null && /^\d+$/.test(ssrc)) out.set(midLine.slice("a=mid:".length).trim(), Number(ssrc));
  }
  return out;
}

/**
 * Codec capabilities reordered so that `mimeType` comes first; the rest keeps its order. With
 * `only`, the list keeps just that codec and the retransmission format (the server answers in
 * its own codec order, so offering one codec is how a publisher insists on it).
 */
function codecFirst(codecs, mimeType, only = false) {
  const wanted = (c) => c.mimeType.toLowerCase() === mimeType;
  const rest = codecs.filter((c) => !wanted(c) && (!only || c.mimeType.toLowerCase() === "video/rtx"));
  return [...codecs.filter(wanted), ...rest];
}

/** The AV1 RTP spec's Dependency Descriptor (Appendix A): the server forwards it to viewers. */
const DEPENDENCY_DESCRIPTOR_URI =
  "https://aomediacodec.github.io/av1-rtp-spec/#dependency-descriptor-rtp-header-extension";

/**
 * Offer the Dependency Descriptor on a receive-only video transceiver. Chromium leaves it off
 * ("stopped") there by default; without it an AV1 SVC stream's layer frames cannot be told
 * apart, and a viewer sent more than the base layer decodes nothing. Browsers without the
 * header-extension control API keep their defaults.
 */
function negotiateDependencyDescriptor(transceiver) {
  if (typeof transceiver.getHeaderExtensionsToNegotiate !== "function") return;
  const extensions = transceiver.getHeaderExtensionsToNegotiate();
  const stopped = (e) => e.uri === DEPENDENCY_DESCRIPTOR_URI && e.direction === "stopped";
  if (!extensions.some(stopped)) return;
  try {
    transceiver.setHeaderExtensionsToNegotiate(
      extensions.map((e) => (stopped(e) ? { ...e, direction: "sendrecv" } : e)),
    );
  } catch (err) {
    console.warn("sfu-client: dependency descriptor not negotiated", err);
  }
}

/** Formats that travel with a media codec (retransmission, redundancy, FEC), never alone. */
const HELPER_CODECS = new Set(["rtx", "red", "ulpfec", "flexfec-03"]);

/**
 * Codec capabilities in the order the room announces (`joined.codecs`, best first): codecs the
 * room cannot forward are left out (the server would reject a section offering only those),
 * the browser's own order is kept within one codec (e.g. H.264 profiles), and the helpers
 * (rtx, red, FEC) follow. Without an announced list (an older server): VP8 first, nothing dropped.
 */
export function roomCodecOrder(codecs, announced) {
  if (!Array.isArray(announced) || announced.length === 0) return codecFirst(codecs, "video/vp8");
  const subtype = (c) => (c.mimeType.split("/")[1] || "").toLowerCase();
  const rank = new Map(announced.map((name, i) => [String(name).toLowerCase(), i]));
  const media = codecs.filter((c) => rank.has(subtype(c)));
  media.sort((a, b) => rank.get(subtype(a)) - rank.get(subtype(b))); // stable
  return [...media, ...codecs.filter((c) => HELPER_CODECS.has(subtype(c)))];
}

export class Room extends EventTarget {
  /**
   * @param {object} options
   * @param {string} [options.url] WebSocket URL; default ws(s)://<this host>/ws
   * @param {string} options.room room name
   * @param {string} options.token join token (JWT)
   * @param {(type: string, payload: any) => void} [options.onEvent] called for every event
   * @param {boolean} [options.autoSubscribe=true] subscribe to every track of the others
   * @param {RTCIceServer[]} [options.iceServers=[]] the server is ICE-lite; none are needed
   * @param {string} [options.password] the room's password, when it has one (sent in the join)
   * @param {{passphrase?: string, key?: BufferSource, keyId?: number, api?: string}} [options.e2ee]
   *   encrypt all media end to end (docs/e2ee.md) with a key shared out of band
   * @param {string} [options.region] a cluster region to be placed in, when the node we reach
   *   is full (docs/protocol.md, "Clusters")
   * @param {boolean} [options.chat=false] open the room chat data channel (docs/protocol.md#chat);
   *   with E2EE, chat text is encrypted with the same passphrase-derived key material
   */
  constructor({ url, room, token, onEvent, autoSubscribe = true, iceServers = [], e2ee = null, password = null, resume = false, iceTransportPolicy = "all", chat = false, region = null } = {}) {
    super();
    if (!room) throw new TypeError("Room: `room` is required");
    /** The node we talk to (after a `moved`, the node the cluster placed us on). */
    this.url = websocketUrl(url);
    /** The region we would rather be served in (a cluster's placement hint), or null. */
    this.region = region;
    /** Whether a cluster node already placed this join (it is then never sent on again). */
    this.placed = false;
    /** Other nodes of the cluster to reconnect to if ours is lost (`joined.nodes`). */
    this.nodes = [];
    this.roomName = room;
    this.token = token;
    this.onEvent = onEvent || null;
    this.autoSubscribe = autoSubscribe;
    this.iceServers = iceServers;
    /** "relay" forces TURN (tests, strict networks); the server adds TURN servers in `joined`. */
    this.iceTransportPolicy = iceTransportPolicy;
    /** Ask the server to resume this identity's session (a reconnect; docs/protocol.md). */
    this.resume = resume;
    /** Whether the server resumed our earlier session (`joined.resumed`). */
    this.resumed = false;
    this._iceTimer = null;
    this._probing = false;
    /** The room's password, kept only to send it in the join. */
    this.password = password || null;
    /** Our grants and the room's policy (from `joined`, then `policy`); for hosts, who waits. */
    this.grants = [];
    this.policy = null;
    this.waiting = [];
    /** The server says this room needs E2EE (`e2ee_required` in `joined`/`waiting`). */
    this.e2eeRequired = false;
    this.e2ee = null;
    this._e2eeKeyReady = Promise.resolve();
    this._e2eeKeyDone = false;
    if (e2ee) this._startE2ee(e2ee);

    /** The `chat` data channel (when `chat` was asked for), created with the connection. */
    this.chatEnabled = chat;
    this._chat = null;

    this.ws = null;
    this.pc = null;
    this.state = "new"; // new | connecting | waiting | joined | closed
    this.participantId = null;
    this.localParticipant = null;
    /** Everyone else: id -> {id, identity, name, tracks: Map(trackId -> track)} */
    this.participants = new Map();

    this._nextId = 1;
    this._pending = new Map(); // request id -> {resolve, reject, timer}
    this._joinWaiter = null;
    this._pingTimer = null;

    // Local publications by slot ("audio", "video", "screen"):
    // {kind, source, name, track, transceiver, trackId, muted}
    this._local = new Map();
    // Subscriptions: trackId -> {trackId, participant, kind, transceiver, announced, answered,
    // ssrc, state ("active" | "paused"), hints {maxSpatial, sizeSpatial, paused, pinned}}
    this._subs = new Map();
    // Recvonly transceivers that no longer carry a subscription, by kind. A transceiver is
    // "freeing" until an offer without its binding has been answered, then "idle" (reusable).
    this._freeing = new Set();
    this._idle = { audio: [], video: [] };

    // Negotiation queue: _queue is the tail of the chain, _scheduled the not-yet-started run.
    this._queue = Promise.resolve();
    this._scheduled = null;
    this._version = 0; // bumped on every change that needs a new offer
    this._negotiatedOnce = false;
  }

  // ---------------------------------------------------------------- events

  _emit(type, payload) {
    if (this.onEvent) {
      try {
        this.onEvent(type, payload);
      } catch (err) {
        console.error("sfu-client: onEvent handler failed", err);
      }
    }
    this.dispatchEvent(new CustomEvent(type, { detail: payload }));
  }

  // ---------------------------------------------------------------- connection

  /** Connect and join; resolves with the `joined` message once admitted. */
  join() {
    if (this.state !== "new") return Promise.reject(new SfuError("already_joined", "join() was already called"));
    if (this.e2ee && !this._e2eeKeyDone) {
      // Join once the E2EE key is derived (PBKDF2 is slow on purpose): no early frame goes unread.
      return this._e2eeKeyReady.then(() => {
        this._e2eeKeyDone = true;
        return this.join();
      });
    }
    this.state = "connecting";
    this.pc = new RTCPeerConnection({
      iceServers: this.iceServers,
      iceTransportPolicy: this.iceTransportPolicy,
      bundlePolicy: "max-bundle",
      rtcpMuxPolicy: "require",
      ...(this.e2ee ? this.e2ee.peerConnectionConfig : {}),
    });
    this.pc.addEventListener("track", (event) => this._onTrack(event));
    this.pc.addEventListener("connectionstatechange", () => {
      this._emit("connection_state", { state: this.pc.connectionState });
    });
    this.pc.addEventListener("iceconnectionstatechange", () => this._watchIce());
    if (this.chatEnabled) this._openChat();

    return new Promise((resolve, reject) => {
      this._joinWaiter = { resolve, reject };
      this._openSignaling();
    });
  }

  /** Open the WebSocket at `this.url` and send the join. A cluster node that should not take
   * us answers `moved` with another node's URL: we join there instead, once (docs/protocol.md,
   * "Clusters"). */
  _openSignaling() {
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch (err) {
      this._shutdown(1006, String(err && err.message));
      return;
    }
    this.ws = ws;
    ws.addEventListener("open", () => {
      if (this.ws !== ws) return;
      const id = this._nextId++;
      // The join reply is `joined` (or `waiting` first); an error carries `re`.
      this._pending.set(id, {
        resolve: () => {},
        reject: (err) => {
          if (err.code === "moved" && err.url && !this.placed && this.state === "connecting") {
            this.placed = true;
            this.url = websocketUrl(err.url);
            this.ws = null;
            if (ws.readyState === WebSocket.OPEN) ws.close(1000, "moved");
            this._emit("moved", { url: this.url });
            this._openSignaling();
            return;
          }
          this._failJoin(err);
          // A refused join leaves nothing to do on this socket.
          if (err.code !== "closed" && ws.readyState === WebSocket.OPEN) ws.close(1000, "join refused");
        },
        timer: null,
      });
      const join = { type: "join", id, protocol: PROTOCOL, room: this.roomName, token: this.token };
      if (this.password) join.password = this.password;
      if (this.resume) join.resume = true;
      if (this.placed) join.placed = true;
      if (this.region) join.region = this.region;
      this._sendRaw(join);
    });
    ws.addEventListener("message", (event) => {
      if (this.ws === ws) this._onMessage(event.data);
    });
    ws.addEventListener("close", (event) => {
      if (this.ws === ws) this._onClose(event.code, event.reason);
    });
    ws.addEventListener("error", () => {
      // A close event always follows; it carries the code.
    });
  }

  _failJoin(err) {
    const waiter = this._joinWaiter;
    this._joinWaiter = null;
    if (waiter) waiter.reject(err);
  }

  /** Send `leave`, wait (briefly) for the server to close the socket, close the peer connection. */
  async leave() {
    if (this.state === "closed") return;
    const ws = this.ws;
    if (ws && ws.readyState === WebSocket.OPEN) {
      const closed = new Promise((resolve) => ws.addEventListener("close", resolve, { once: true }));
      try {
        this._sendRaw({ type: "leave" });
      } catch (err) {
        // the socket is going away anyway
      }
      await Promise.race([closed, delay(1000)]);
    }
    if (this.state !== "closed") {
      if (ws && ws.readyState !== WebSocket.CLOSED) ws.close(1000, "leave");
      this._shutdown(1000, "leave");
    }
  }

  _onClose(code, reason) {
    if (this.state === "closed") return;
    this._shutdown(code, reason);
  }

  _shutdown(code, reason) {
    if (this.state === "closed") return;
    const wasJoining = this._joinWaiter !== null;
    this.state = "closed";
    clearTimeout(this._iceTimer);
    clearInterval(this._pingTimer);
    this._pingTimer = null;
    const err = new SfuError("closed", `connection closed (${code}${reason ? ": " + reason : ""})`, {
      closeCode: code,
      reason,
    });
    for (const [, pending] of this._pending) {
      clearTimeout(pending.timer);
      pending.reject(err);
    }
    this._pending.clear();
    if (wasJoining) this._failJoin(err);
    if (this.pc) this.pc.close();
    if (this.e2ee) this.e2ee.close();
    this._emit("closed", { code, reason });
  }

  _sendRaw(message) {
    const text = JSON.stringify(message);
    if (new TextEncoder().encode(text).length > MAX_MESSAGE_BYTES) {
      throw new SfuError("too_large", `${message.type} message is over 64 KiB (${text.length} characters)`);
    }
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) throw new SfuError("closed", "the WebSocket is not open");
    this.ws.send(text);
  }

  /** Send a request and resolve with its reply (`answer`, `ok`, `pong`); `error` rejects. */
  _request(message, timeoutMs = REQUEST_TIMEOUT_MS) {
    return new Promise((resolve, reject) => {
      const id = this._nextId++;
      const timer = setTimeout(() => {
        this._pending.delete(id);
        reject(new SfuError("timeout", `no reply to ${message.type} within ${timeoutMs} ms`));
      }, timeoutMs);
      this._pending.set(id, { resolve, reject, timer });
      try {
        this._sendRaw({ ...message, id });
      } catch (err) {
        clearTimeout(timer);
        this._pending.delete(id);
        reject(err);
      }
    });
  }

  _onMessage(data) {
    let msg;
    try {
      msg = JSON.parse(data);
    } catch (err) {
      this._emit("error", { code: "bad_json", message: "the server sent a message that is not JSON" });
      return;
    }
    if (!msg || typeof msg !== "object") return;

    // Replies to requests; `joined`/`waiting` are handled below even if they echo the join's id.
    const isReply = msg.type === "answer" || msg.type === "ok" || msg.type === "pong" || msg.type === "error";
    if (isReply && "re" in msg && this._pending.has(msg.re)) {
      const pending = this._pending.get(msg.re);
      this._pending.delete(msg.re);
      clearTimeout(pending.timer);
      if (msg.type === "error") {
        const extra = typeof msg.url === "string" ? { url: msg.url } : {};
        pending.reject(new SfuError(msg.code || "error", msg.message || msg.code, extra));
      }
      else pending.resolve(msg);
      return;
    }

    // A room policy changed mid-meeting (`policy` message): follow its E2EE requirement.
    if (msg.type === "policy" && typeof msg.e2ee_required === "boolean") this._onE2eeRequired(msg.e2ee_required);

    switch (msg.type) {
      case "waiting":
        this.state = "waiting";
        if (msg.e2ee_required === true) this.e2eeRequired = true;
        this._emit("waiting", { reason: msg.reason, e2eeRequired: this.e2eeRequired });
        break;
      case "joined":
        this._onJoined(msg);
        break;
      case "participant_joined": {
        const bound = this._addParticipant(msg.participant);
        this._emit("participant_joined", { participant: msg.participant });
        if (bound) this._renegotiateQuietly();
        break;
      }
      case "participant_left":
        this._onParticipantLeft(msg.participant);
        break;
      case "track_published":
        this._onTrackPublished(msg.track);
        break;
      case "track_unpublished":
        this._onTrackUnpublished(msg.track);
        break;
      case "track_muted":
        this._onTrackMuted(msg.track, msg.muted, msg.force_muted);
        break;
      case "track_updated":
        this._onTrackUpdated(msg.track);
        break;
      case "waiting_list":
        this.waiting = Array.isArray(msg.waiting) ? msg.waiting : [];
        this._emit("waiting_list", { waiting: this.waiting });
        break;
      case "policy":
        this.policy = msg.policy || null;
        this._emit("policy", { policy: this.policy });
        break;
      case "mute_requested": {
        const own = [...this._local.values()].find((l) => l.trackId === msg.track);
        this._emit("mute_requested", { track: msg.track, kind: own ? own.kind : null, by: msg.by || null });
        break;
      }
      case "speakers":
        this._emit("speakers", { speakers: Array.isArray(msg.speakers) ? msg.speakers : [] });
        break;
      case "stream_state": {
        // The server paused a subscription because our bandwidth does not fit even its lowest
        // layer, or resumed it: nothing arrives meanwhile, which is not a frozen picture.
        const sub = this._subs.get(msg.track);
        const state = msg.state === "paused" ? "paused" : "active";
        if (sub) sub.state = state;
        this._emit("stream_state", {
          track: msg.track,
          participant: sub ? sub.participant : null,
          state,
          reason: typeof msg.reason === "string" ? msg.reason : null,
        });
        break;
      }
      case "chat":
        this._onChatEnvelope(msg, "socket");
        break;
      case "chat_muted":
        this._emit("chat_muted", { participant: msg.participant, muted: msg.muted === true, local: msg.participant === this.participantId });
        break;
      case "server_draining":
        // The server is shutting down: the call goes on, but a reconnect must go elsewhere.
        // In a cluster it names the node to go to (`url`); the page reconnects there.
        this._emit("server_draining", {
          deadlineS: typeof msg.deadline_s === "number" ? msg.deadline_s : null,
          url: typeof msg.url === "string" ? websocketUrl(msg.url) : null,
        });
        break;
      case "error":
        // An error that answers nothing we wait for (for instance rate_limited without `re`).
        this._emit("error", { code: msg.code, message: msg.message });
        break;
      default:
        // Replies to requests we no longer wait for, and types newer than this client.
        break;
    }
  }

  _onJoined(msg) {
    // The pending join request (if the server echoed no `re`) is done.
    for (const [id, pending] of this._pending) {
      if (pending.timer === null) this._pending.delete(id);
    }
    this.state = "joined";
    this.e2eeRequired = msg.e2ee_required === true;
    this.localParticipant = msg.participant || null;
    this.grants = Array.isArray(msg.grants) ? msg.grants : [];
    this.policy = msg.policy || null;
    this.participantId = msg.participant ? msg.participant.id : null;
    this.resumed = msg.resumed === true;
    this.nodes = Array.isArray(msg.nodes) ? msg.nodes.filter((u) => typeof u === "string").map(websocketUrl) : [];
    /** What the room forwards, best first: `{audio: [...], video: [...]}` (encoding names). */
    this.roomCodecs = msg.codecs && typeof msg.codecs === "object" ? msg.codecs : null;
    this._useIceServers(msg.ice_servers);
    for (const p of msg.participants || []) this._addParticipant(p);
    this._pingTimer = setInterval(() => {
      this._request({ type: "ping" }).catch(() => {});
    }, PING_INTERVAL_MS);
    const payload = {
      room: msg.room,
      participant: msg.participant,
      participants: msg.participants || [],
      grants: this.grants,
      policy: this.policy,
      e2eeRequired: this.e2eeRequired,
      resumed: this.resumed,
    };
    this._emit("joined", payload);
    if (this._joinWaiter) {
      const waiter = this._joinWaiter;
      this._joinWaiter = null;
      waiter.resolve(payload);
    }
    if (this._subs.size || this._chat) this._renegotiateQuietly();
  }

  // ---------------------------------------------------------------- chat

  _openChat() {
    // In-band (DCEP) negotiation, reliable and ordered: the server relays on the channel with
    // the same label of every other participant (docs/protocol.md#chat).
    const channel = this.pc.createDataChannel("chat");
    channel.addEventListener("message", (event) => {
      if (typeof event.data !== "string") return;
      let envelope;
      try {
        envelope = JSON.parse(event.data);
      } catch (err) {
        return;
      }
      this._onChatEnvelope(envelope, "channel");
    });
    channel.addEventListener("open", () => this._emit("chat_state", { open: true }));
    channel.addEventListener("close", () => this._emit("chat_state", { open: false }));
    this._chat = channel;
  }

  /** True once chat goes over the data channel (before that, sendChat uses the socket). */
  get chatOpen() {
    return !!(this._chat && this._chat.readyState === "open");
  }

  /**
   * Send one chat message to everyone else in the room. In an E2EE room (a key installed) the
   * text is encrypted first, so the server relays ciphertext. Resolves with {via, wire}: the
   * transport used and exactly what left this page.
   */
  async sendChat(text) {
    if (typeof text !== "string" || !text) throw new SfuError("bad_message", "a chat message is a non-empty string");
    if (this.state !== "joined") throw new SfuError("not_joined", "join before chatting");
    const encrypting = !!(this.e2ee && this.e2ee.hasKey);
    if (this.e2eeRequired && !encrypting) throw new SfuError("e2ee_required", "this room requires end-to-end encryption: chat needs the passphrase");
    const wire = encrypting ? await this.e2ee.encryptChat(text) : text;
    if (this.chatOpen) {
      this._chat.send(wire);
      return { via: "channel", wire };
    }
    await this._request({ type: "chat", text: wire });
    return { via: "socket", wire };
  }

  async _onChatEnvelope(envelope, via) {
    if (!envelope || envelope.type !== "chat" || typeof envelope.text !== "string") return;
    const from = typeof envelope.from === "string" ? envelope.from : null;
    const p = from ? this.participants.get(from) : null;
    const out = { from, name: p ? p.name : null, text: envelope.text, encrypted: false, undecryptable: false, reliable: envelope.reliable !== false, via };
    if (this.e2ee && this.e2ee.isEncryptedChat(envelope.text)) {
      out.encrypted = true;
      try {
        out.text = await this.e2ee.decryptChat(envelope.text);
      } catch (err) {
        out.text = null;
        out.undecryptable = true;
      }
    }
    this._emit("chat", out);
  }

  // ---------------------------------------------------------------- reachability

  /** TURN servers with short-lived credentials from `joined` (docs/deployment.md). */
  _useIceServers(servers) {
    if (!Array.isArray(servers) || servers.length === 0 || !this.pc) return;
    this.iceServers = [...this.iceServers, ...servers];
    try {
      this.pc.setConfiguration({ ...this.pc.getConfiguration(), iceServers: this.iceServers });
    } catch (err) {
      console.warn("sfu-client: cannot apply the server's ICE servers", err);
    }
  }

  /** ICE `disconnected` for ICE_RESTART_DELAY_MS (or `failed`): restart ICE and renegotiate. */
  _watchIce() {
    if (!this.pc) return;
    const state = this.pc.iceConnectionState;
    clearTimeout(this._iceTimer);
    this._iceTimer = null;
    if (state === "disconnected" || state === "failed") {
      this._iceTimer = setTimeout(() => this._restartIce(), state === "failed" ? 0 : ICE_RESTART_DELAY_MS);
    }
  }

  _restartIce() {
    this._iceTimer = null;
    const pc = this.pc;
    if (this.state !== "joined" || !pc || pc.signalingState === "closed") return;
    if (pc.iceConnectionState !== "disconnected" && pc.iceConnectionState !== "failed") return;
    pc.restartIce();
    this._emit("ice_restart", { state: pc.iceConnectionState });
    this._probeSignaling();
    this._renegotiateQuietly();
    // Still not back (the network is down, or the offer could not be sent): try again later.
    this._iceTimer = setTimeout(() => this._restartIce(), ICE_RESTART_RETRY_MS);
  }

  /** Ping with a short deadline; no pong means the WebSocket is gone: close the Room
   * (code 1006, "signaling lost") so the page can reconnect. */
  _probeSignaling() {
    if (this.state !== "joined" || this._probing) return;
    this._probing = true;
    this._request({ type: "ping" }, SIGNALING_PROBE_MS).then(
      () => {
        this._probing = false;
      },
      (err) => {
        this._probing = false;
        if (err.code !== "timeout" || this.state === "closed") return;
        this.abandon("signaling lost");
      },
    );
  }

  /** Give up this connection without leaving: the socket closes with 4000 (not a clean
   * close, so the server keeps our place for a resume) and the Room closes with 1006. */
  abandon(reason = "abandoned") {
    if (this.state === "closed") return;
    const ws = this.ws;
    try {
      if (ws && ws.readyState <= WebSocket.OPEN) ws.close(CLOSE_SIGNALING_LOST, reason);
    } catch (closeErr) {
      // it is being abandoned anyway
    }
    this._shutdown(1006, reason);
  }

  // ---------------------------------------------------------------- room state

  /** Remember a participant and its tracks; true when that bound a new subscription. */
  _addParticipant(p) {
    if (!p || !p.id || p.id === this.participantId) return false;
    const entry = this.participants.get(p.id) || { id: p.id, identity: p.identity, name: p.name, tracks: new Map() };
    entry.identity = p.identity;
    entry.name = p.name;
    this.participants.set(p.id, entry);
    let bound = false;
    for (const track of p.tracks || []) bound = this._rememberTrack({ participant: p.id, ...track }) || bound;
    return bound;
  }

  /** Remember a remote track (and auto-subscribe); true when that bound a new subscription. */
  _rememberTrack(track) {
    const owner = this.participants.get(track.participant);
    if (!owner) return false;
    owner.tracks.set(track.id, { ...track });
    return this.autoSubscribe ? this._bind(track) : false;
  }

  _onTrackPublished(track) {
    if (!track) return;
    if (track.participant === this.participantId) {
      // One of ours: learn its id, matching by name (then source, then kind).
      const waiting = [...this._local.values()].filter((l) => !l.trackId);
      let local = waiting.find((l) => l.name === track.name && (!track.source || l.source === track.source));
      if (!local) local = waiting.find((l) => l.source === track.source);
      if (!local) local = this._local.get(track.kind);
      if (local) {
        local.trackId = track.id;
        if (local.muted) this._request({ type: "mute", track: track.id, muted: true }).catch(() => {});
      }
      this._emit("track_published", { track, local: true });
      return;
    }
    if (!this.participants.has(track.participant)) {
      // A track of someone we have not heard of: remember the owner minimally.
      this.participants.set(track.participant, { id: track.participant, identity: null, name: null, tracks: new Map() });
    }
    const bound = this._rememberTrack(track);
    this._emit("track_published", { track, local: false });
    if (bound) this._renegotiateQuietly();
  }

  /** A track's description changed (an SVC stream's spatial layers became known). */
  _onTrackUpdated(track) {
    if (!track) return;
    for (const p of this.participants.values()) {
      const known = p.tracks.get(track.id);
      if (known) p.tracks.set(track.id, { ...known, ...track });
    }
    this._emit("track_updated", { track });
  }

  _onTrackUnpublished(trackId) {
    let owner = null;
    for (const p of this.participants.values()) {
      if (p.tracks.delete(trackId)) owner = p;
    }
    for (const local of this._local.values()) {
      if (local.trackId === trackId) local.trackId = null;
    }
    const changed = this._unbind(trackId);
    this._emit("track_unpublished", {
      track: trackId,
      participant: owner ? owner.id : null,
      remaining: owner ? owner.tracks.size : 0,
    });
    if (changed) this._renegotiateQuietly();
  }

  _onParticipantLeft(participantId) {
    const p = this.participants.get(participantId);
    this.participants.delete(participantId);
    let changed = false;
    for (const sub of [...this._subs.values()]) {
      if (sub.participant === participantId) changed = this._unbind(sub.trackId) || changed;
    }
    this._emit("participant_left", { participant: participantId, name: p ? p.name : null });
    if (changed) this._renegotiateQuietly();
  }

  _onTrackMuted(trackId, muted, forceMuted) {
    const forced = typeof forceMuted === "boolean" ? forceMuted : undefined;
    for (const p of this.participants.values()) {
      const t = p.tracks.get(trackId);
      if (!t) continue;
      t.muted = !!muted;
      if (forced !== undefined) t.force_muted = forced;
    }
    const own = [...this._local.values()].find((l) => l.trackId === trackId);
    if (own && forced !== undefined) {
      // A host muted (or released) our track: the server forwards none of it meanwhile and we
      // stop sending it too; once released it stays muted until we unmute it ourselves.
      own.forceMuted = forced;
      if (forced) {
        own.muted = true;
        own.track.enabled = false;
      }
    }
    this._emit("track_muted", {
      track: trackId,
      muted: !!muted,
      local: !!own,
      kind: own ? own.kind : null,
      forceMuted: forced,
    });
  }

  // ---------------------------------------------------------------- subscriptions

  /** Bind a recvonly transceiver to a remote track (no negotiation yet). */
  _bind(track) {
    if (this._subs.has(track.id)) return false;
    if (track.kind !== "audio" && track.kind !== "video") return false;
    if (!this.pc || this.pc.signalingState === "closed") return false;
    let transceiver = this._idle[track.kind].shift();
    if (!transceiver) {
      transceiver = this.pc.addTransceiver(track.kind, { direction: "recvonly" });
      if (track.kind === "video") negotiateDependencyDescriptor(transceiver);
      // A reused transceiver keeps its receiver and so its decrypting transform.
      if (this.e2ee) this.e2ee.attachReceiver(transceiver.receiver, track.kind);
    }
    this._subs.set(track.id, {
      trackId: track.id,
      participant: track.participant,
      kind: track.kind,
      transceiver,
      announced: false, // remote_track emitted
      answered: false, // an answer covering this binding has been applied
      ssrc: null, // the server's SSRC for it, from that answer
      state: "active", // "paused" while the server pauses it for bandwidth (stream_state)
      hints: { maxSpatial: undefined, sizeSpatial: null, paused: false, pinned: false, sent: null },
      hintTimer: null,
      observers: null,
    });
    this._version++;
    return true;
  }

  /** Drop a subscription; its transceiver becomes reusable after the next answered offer. */
  _unbind(trackId) {
    const sub = this._subs.get(trackId);
    if (!sub) return false;
    this.unobserveTile(trackId);
    this._subs.delete(trackId);
    this._freeing.add(sub.transceiver);
    this._version++;
    return true;
  }

  /** Subscribe to a track by id (needed only with autoSubscribe: false). */
  async subscribe(trackId) {
    const track = this._findTrack(trackId);
    if (!track) throw new SfuError("unknown_track", `no track ${trackId} in this room`);
    if (this._bind(track)) await this.renegotiate();
  }

  /** Stop receiving a track: forwarding stops at once, the transceiver is freed by renegotiating. */
  async unsubscribe(trackId) {
    if (!this._subs.has(trackId)) return;
    try {
      await this._request({ type: "unsubscribe", track: trackId });
    } catch (err) {
      if (err.code !== "unknown_track") throw err;
    }
    if (this._unbind(trackId)) await this.renegotiate();
  }

  _findTrack(trackId) {
    for (const p of this.participants.values()) {
      const t = p.tracks.get(trackId);
      if (t) return t;
    }
    return null;
  }

  _onTrack(event) {
    for (const sub of this._subs.values()) {
      if (sub.transceiver === event.transceiver) {
        this._announce(sub);
        return;
      }
    }
  }

  _announce(sub) {
    if (sub.announced || this._subs.get(sub.trackId) !== sub) return;
    sub.announced = true;
    const owner = this.participants.get(sub.participant);
    this._emit("remote_track", {
      trackId: sub.trackId,
      participant: sub.participant,
      name: owner ? owner.name : null,
      kind: sub.kind,
      source: (this._findTrack(sub.trackId) || {}).source || (sub.kind === "video" ? "camera" : "microphone"),
      track: sub.transceiver.receiver.track,
    });
  }

  /** The MediaStreamTrack currently receiving a subscribed track, or null. */
  remoteTrack(trackId) {
    const sub = this._subs.get(trackId);
    return sub && sub.announced ? sub.transceiver.receiver.track : null;
  }

  // ---------------------------------------------------------------- publishing

  /**
   * Publish a stream's audio ("microphone") and video ("camera") tracks.
   * @param {MediaStream} stream
   * `codec` (e.g. "vp9") offers that video codec alone instead of VP8 first; `scalabilityMode` (e.g.
   * "L3T3_KEY") sends one scalable (SVC) stream in that mode instead of simulcast: the server
   * selects its layers per subscriber.
   * @param {{simulcast?: boolean, audioName?: string, videoName?: string, codec?: string,
   *   scalabilityMode?: string}} [options]
   */
  async publish(
    stream,
    { simulcast = true, audioName = "microphone", videoName = "camera", codec = "", scalabilityMode = "" } = {},
  ) {
    if (this.state !== "joined") throw new SfuError("not_joined", "publish() needs a joined room");
    if (this.e2ee) await this._e2eeKeyReady;
    if (this.e2eeRequired && !(this.e2ee && this.e2ee.hasKey)) {
      throw new SfuError(
        "e2ee_required",
        "this room requires end-to-end encryption: join with the meeting passphrase to send audio and video",
      );
    }
    const audio = stream.getAudioTracks()[0];
    const video = stream.getVideoTracks()[0];
    if (audio) this._addLocal("audio", "audio", "microphone", audio, audioName, stream, {});
    if (video) {
      let init = simulcast ? { sendEncodings: SIMULCAST_ENCODINGS.map((e) => ({ ...e })) } : {};
      if (scalabilityMode) init = { sendEncodings: [{ scalabilityMode }] };
      const transceiver = this._addLocal("video", "video", "camera", video, videoName, stream, init);
      if (codec) this._preferCodec(transceiver, `video/${codec.toLowerCase()}`, true);
      else this._preferRoomCodecs(transceiver);
    }
    await this.renegotiate();
  }

  /**
   * Share a screen (a getDisplayMedia stream) as its own publication, source "screen": the
   * server gives it bandwidth before every camera. Single layer unless `simulcast`; ending the
   * capture (the browser's "stop sharing") unpublishes it.
   * @param {MediaStream} stream
   * @param {{simulcast?: boolean, name?: string}} [options]
   */
  async publishScreen(stream, { simulcast = false, name = "screen" } = {}) {
    if (this.state !== "joined") throw new SfuError("not_joined", "publishScreen() needs a joined room");
    if (this.e2ee) await this._e2eeKeyReady;
    if (this.e2eeRequired && !(this.e2ee && this.e2ee.hasKey)) {
      throw new SfuError("e2ee_required", "this room requires end-to-end encryption: join with the meeting passphrase to share");
    }
    const video = stream.getVideoTracks()[0];
    if (!video) throw new SfuError("no_video", "the stream has no video track to share");
    // Text on a screen stays legible at a low frame rate; motion is what it gives up.
    if ("contentHint" in video) video.contentHint = "detail";
    const init = simulcast ? { sendEncodings: SIMULCAST_ENCODINGS.map((e) => ({ ...e })) } : {};
    const transceiver = this._addLocal("screen", "video", "screen", video, name, stream, init);
    this._preferRoomCodecs(transceiver);
    video.addEventListener("ended", () => {
      const local = this._local.get("screen");
      if (local && local.track === video) this.unpublish("screen").catch(() => {});
    });
    await this.renegotiate();
  }

  _addLocal(slot, kind, source, track, name, stream, init) {
    const existing = this._local.get(slot);
    if (existing) {
      // Publishing a slot again replaces the track in place (same m-section, same publication).
      existing.track = track;
      existing.name = name;
      track.enabled = !existing.muted;
      existing.transceiver.sender.replaceTrack(track);
      existing.transceiver.direction = "sendonly";
      this._version++;
      return existing.transceiver;
    }
    const transceiver = this.pc.addTransceiver(track, { direction: "sendonly", streams: [stream], ...init });
    if (this.e2ee) this.e2ee.attachSender(transceiver.sender, kind);
    this._local.set(slot, { kind, source, name, track, transceiver, trackId: null, muted: false });
    this._version++;
    return transceiver;
  }

  /**
   * Order a sending video transceiver's codecs as the room prefers them (`joined.codecs`;
   * VP8 first when the server announced nothing), leaving out what the room cannot forward.
   * The sender's capabilities are the right list for a sendonly m-section; browsers that
   * accept only receiver capabilities in setCodecPreferences get those instead.
   */
  _preferRoomCodecs(transceiver) {
    if (typeof transceiver.setCodecPreferences !== "function") return;
    const announced = this.roomCodecs ? this.roomCodecs.video : null;
    const isMedia = (c) => !HELPER_CODECS.has((c.mimeType.split("/")[1] || "").toLowerCase());
    this._setCodecs(transceiver, (caps) => {
      const ordered = roomCodecOrder(caps.codecs, announced);
      return ordered.some(isMedia) ? ordered : null;
    });
  }

  /** Put the codec `mimeType` first in a sending transceiver's codec list (see _preferRoomCodecs);
   * with `only`, offer no other codec. */
  _preferCodec(transceiver, mimeType, only = false) {
    if (typeof transceiver.setCodecPreferences !== "function") return;
    const has = (caps) => caps.codecs.some((c) => c.mimeType.toLowerCase() === mimeType);
    this._setCodecs(transceiver, (caps) => (has(caps) ? codecFirst(caps.codecs, mimeType, only) : null));
  }

  /** Apply the first codec list `order` makes (from the sender's capabilities, else the
   * receiver's) that the browser accepts; `order` returns null to skip a capability list. */
  _setCodecs(transceiver, order) {
    for (const source of [window.RTCRtpSender, window.RTCRtpReceiver]) {
      const caps = source && source.getCapabilities ? source.getCapabilities("video") : null;
      if (!caps) continue;
      const ordered = order(caps);
      if (!ordered) continue;
      try {
        transceiver.setCodecPreferences(ordered);
        return;
      } catch (err) {
        // try the next list
      }
    }
    console.warn("sfu-client: setCodecPreferences refused; using the browser's codec order");
  }

  /** Stop publishing one slot ("audio", "video" or "screen"): the next offer no longer sends it. */
  async unpublish(slot) {
    const local = this._local.get(slot);
    if (!local) return;
    this._local.delete(slot);
    await local.transceiver.sender.replaceTrack(null);
    local.transceiver.direction = "inactive";
    this._version++;
    await this.renegotiate();
  }

  /** The id the server gave our published track of this kind (null until track_published). */
  publishedTrackId(kind) {
    const local = this._local.get(kind);
    return local ? local.trackId : null;
  }

  /** Mute or unmute our own published audio or video: disables the track and tells the room. */
  async setMuted(kind, muted) {
    const local = this._local.get(kind);
    if (!local) throw new SfuError("unknown_track", `nothing of kind ${kind} is published`);
    if (!muted && local.forceMuted) throw new SfuError("force_muted", "a host muted this track; only a host can release it");
    local.muted = !!muted;
    local.track.enabled = !muted;
    if (local.trackId) await this._request({ type: "mute", track: local.trackId, muted: !!muted });
    // Otherwise the mute is sent once track_published tells us the track id.
  }

  isMuted(kind) {
    const local = this._local.get(kind);
    return local ? local.muted : false;
  }

  /** Whether a host has muted our published track of this kind (we cannot unmute it). */
  isForceMuted(kind) {
    const local = this._local.get(kind);
    return local ? !!local.forceMuted : false;
  }

  // ---------------------------------------------------------------- hosting

  /** Whether our token lets us admit and moderate (the `host` or `admin` grant). */
  get isHost() {
    return this.grants.includes("host") || this.grants.includes("admin");
  }

  /** Let a waiting participant in (host). */
  admit(participantId) {
    return this._request({ type: "admit", participant: participantId });
  }

  /** Turn a waiting participant away (host). */
  deny(participantId) {
    return this._request({ type: "deny", participant: participantId });
  }

  /** Let everyone waiting in (host); resolves with `{admitted}`. */
  admitAll() {
    return this._request({ type: "admit_all" });
  }

  /** End a participant's session (host); with `banS` it may not rejoin this room for that long. */
  remove(participantId, { banS } = {}) {
    const message = { type: "remove", participant: participantId };
    if (banS) message.ban_s = banS;
    return this._request(message);
  }

  /** Ask the publisher of a track to mute it (host); its client decides. */
  requestMute(trackId) {
    return this._request({ type: "request_mute", track: trackId });
  }

  /** Stop (or, with `muted: false`, resume) forwarding a track (host). */
  forceMute(trackId, muted = true) {
    return this._request({ type: "force_mute", track: trackId, muted: !!muted });
  }

  /** Lock the room against new joins, or unlock it (host). */
  lock(locked = true) {
    return this._request({ type: "lock", locked: !!locked });
  }

  /** End the meeting for everyone, ourselves included (host): the socket closes with 4005. */
  async endMeeting() {
    try {
      await this._request({ type: "end_meeting" });
    } catch (err) {
      if (err.code !== "closed") throw err;
    }
  }

  /** Receive preferences for a subscribed track: {maxSpatial, maxTemporal, paused, pinned}. */
  async setPreferences(trackId, { maxSpatial, maxTemporal, paused, pinned } = {}) {
    const message = { type: "prefs", track: trackId };
    if (maxSpatial !== undefined) message.max_spatial = maxSpatial;
    if (maxTemporal !== undefined) message.max_temporal = maxTemporal;
    if (paused !== undefined) message.paused = !!paused;
    if (pinned !== undefined) message.pinned = !!pinned;
    return this._request(message);
  }

  /** Whether the server has paused a subscribed track for bandwidth (stream_state). */
  streamState(trackId) {
    const sub = this._subs.get(trackId);
    return sub ? sub.state : null;
  }

  /**
   * Follow the element that shows a subscribed video track: its visible size (in device pixels)
   * caps the layer the server sends and a hidden or scrolled-away tile gets nothing, sent as
   * `prefs` hints at most every HINT_DEBOUNCE_MS.
   */
  observeTile(trackId, element) {
    const sub = this._subs.get(trackId);
    if (!sub || sub.kind !== "video" || !element) return;
    this.unobserveTile(trackId);
    let visible = true;
    const update = () => {
      const ratio = window.devicePixelRatio || 1;
      const height = element.clientHeight * ratio;
      const track = this._findTrack(trackId);
      const layers = track && Array.isArray(track.layers) ? track.layers.length : 0;
      sub.hints.paused = !visible || height === 0;
      sub.hints.sizeSpatial = layers > 1 ? layerForHeight(height, layers, track.height || ASSUMED_TOP_HEIGHT) : null;
      this._scheduleHints(sub);
    };
    const observers = [];
    if (typeof ResizeObserver === "function") {
      const resize = new ResizeObserver(update);
      resize.observe(element);
      observers.push(resize);
    }
    if (typeof IntersectionObserver === "function") {
      const intersection = new IntersectionObserver((entries) => {
        visible = entries[entries.length - 1].isIntersecting;
        update();
      });
      intersection.observe(element);
      observers.push(intersection);
    }
    sub.observers = observers;
    update();
  }

  /** Stop following a tile (its hints stay as last sent). */
  unobserveTile(trackId) {
    const sub = this._subs.get(trackId);
    if (!sub) return;
    for (const observer of sub.observers || []) observer.disconnect();
    sub.observers = null;
    clearTimeout(sub.hintTimer);
    sub.hintTimer = null;
  }

  /** Pin (or unpin) a subscribed track: it gets bandwidth before other cameras. */
  setPinned(trackId, pinned) {
    const sub = this._subs.get(trackId);
    if (!sub) return;
    sub.hints.pinned = !!pinned;
    this._scheduleHints(sub, 0);
  }

  /** A manual quality cap for a subscribed track (null: automatic), combined with its hints. */
  setMaxSpatial(trackId, maxSpatial) {
    const sub = this._subs.get(trackId);
    if (!sub) return;
    sub.hints.maxSpatial = maxSpatial;
    this._scheduleHints(sub, 0);
  }

  _scheduleHints(sub, wait = HINT_DEBOUNCE_MS) {
    if (sub.hintTimer !== null) {
      if (wait > 0) return; // one is pending: it sends the latest values
      clearTimeout(sub.hintTimer);
    }
    sub.hintTimer = setTimeout(() => {
      sub.hintTimer = null;
      this._sendHints(sub);
    }, wait);
  }

  _sendHints(sub) {
    if (this._subs.get(sub.trackId) !== sub || this.state !== "joined") return;
    const h = sub.hints;
    const caps = [h.maxSpatial, h.sizeSpatial].filter((v) => v !== null && v !== undefined);
    const prefs = { maxSpatial: caps.length ? Math.min(...caps) : null, paused: h.paused, pinned: h.pinned };
    const key = JSON.stringify(prefs);
    if (key === h.sent) return;
    h.sent = key;
    this.setPreferences(sub.trackId, prefs).catch((err) => {
      h.sent = null;
      if (err.code !== "closed" && err.code !== "unknown_track") this._emit("error", { code: err.code, message: err.message });
    });
  }

  // ---------------------------------------------------------------- negotiation

  /** Queue one offer/answer round with the current state; resolves when it has been answered. */
  renegotiate() {
    if (this._scheduled) return this._scheduled;
    const run = this._queue.then(() => delay(NEGOTIATION_DEBOUNCE_MS)).then(() => {
      this._scheduled = null;
      return this._negotiate();
    });
    this._scheduled = run;
    this._queue = run.catch(() => {});
    return run;
  }

  _renegotiateQuietly() {
    this.renegotiate().catch((err) => {
      if (err.code !== "closed") this._emit("error", { code: err.code || "negotiation_failed", message: err.message });
    });
  }

  async _negotiate() {
    const pc = this.pc;
    if (this.state !== "joined" || !pc || pc.signalingState === "closed") return;
    if (pc.getTransceivers().length === 0 && !this._chat) return;
    const version = this._version;

    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    if (!this._negotiatedOnce) await this._iceGathered(pc);

    const tracks = {};
    for (const local of this._local.values()) {
      const mid = local.transceiver.mid;
      if (mid === null || local.transceiver.direction !== "sendonly") continue;
      tracks[mid] = { name: local.name, source: local.source };
      const height = local.kind === "video" && local.track.getSettings ? local.track.getSettings().height : undefined;
      if (Number.isInteger(height) && height > 0 && height <= 4320) tracks[mid].height = height;
    }
    const subscriptions = {};
    const offered = [];
    for (const sub of this._subs.values()) {
      const mid = sub.transceiver.mid;
      if (mid === null) continue; // added after this offer was created: the next one carries it
      subscriptions[mid] = sub.trackId;
      offered.push(sub);
    }
    const boundNow = new Set(offered.map((s) => s.transceiver));
    const freed = [...this._freeing].filter((t) => t.mid !== null && !boundNow.has(t));

    let reply;
    try {
      reply = await this._request({ type: "offer", sdp: pc.localDescription.sdp, tracks, subscriptions });
    } catch (err) {
      if (pc.signalingState === "have-local-offer") {
        await pc.setLocalDescription({ type: "rollback" }).catch(() => {});
      }
      // A refused offer changes nothing on the server. If our state moved on meanwhile (say the
      // track we subscribed to was unpublished), a fresh offer may well succeed: try once more.
      if (err.code !== "closed" && this._version !== version && this.state === "joined") {
        return this._negotiate();
      }
      throw err;
    }
    if (pc.signalingState !== "have-local-offer") return; // closed meanwhile
    await pc.setRemoteDescription({ type: "answer", sdp: reply.sdp });
    this._negotiatedOnce = true;

    for (const t of freed) {
      if (!this._freeing.delete(t)) continue;
      if ([...this._subs.values()].some((s) => s.transceiver === t)) continue;
      this._idle[t.receiver.track.kind].push(t);
    }
    const ssrcs = answerSsrcs(reply.sdp);
    for (const sub of offered) {
      if (this._subs.get(sub.trackId) !== sub) continue;
      sub.answered = true;
      sub.ssrc = ssrcs.get(sub.transceiver.mid) ?? null;
      this._announce(sub);
    }
  }

  /** ICE-lite server: our candidates are optional, but put the host ones in the first offer. */
  _iceGathered(pc) {
    if (pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        pc.removeEventListener("icegatheringstatechange", check);
        clearTimeout(timer);
        resolve();
      };
      const check = () => pc.iceGatheringState === "complete" && done();
      const timer = setTimeout(done, ICE_GATHERING_WAIT_MS);
      pc.addEventListener("icegatheringstatechange", check);
    });
  }

  // ---------------------------------------------------------------- end-to-end encryption

  _startE2ee({ passphrase, key, keyId = 0, api } = {}) {
    try {
      this.e2ee = new E2eeSession({ room: this.roomName, api });
    } catch (err) {
      throw new SfuError(err.code || "e2ee_unsupported", err.message);
    }
    const material = passphrase || key;
    if (material) {
      this._e2eeKeyReady = this.e2ee.setKey(material, keyId).catch((err) => {
        this._emit("error", { code: err.code || "e2ee_key", message: `end-to-end key: ${err.message}` });
      });
    }
  }

  /** The room now requires E2EE (or no longer does); without a key we stop sending. */
  _onE2eeRequired(required) {
    const changed = this.e2eeRequired !== required;
    this.e2eeRequired = required;
    if (!changed) return;
    if (required && !(this.e2ee && this.e2ee.hasKey)) {
      for (const kind of [...this._local.keys()]) this.unpublish(kind).catch(() => {});
    }
    this._emit("e2ee_required", { required, sending: !required || !!(this.e2ee && this.e2ee.hasKey) });
  }

  /**
   * Install an E2EE key (a passphrase or raw bytes) under `keyId` (0-255), e.g. a new one after
   * someone left. With `current: false` it is only accepted for receiving, so a rotation can be
   * staged everywhere before senders switch. The last four key ids stay accepted.
   */
  async setE2eeKey(material, keyId, { current = true } = {}) {
    if (!this.e2ee) throw new SfuError("e2ee_off", "this room was joined without end-to-end encryption");
    return this.e2ee.setKey(material, keyId, { current });
  }

  /** E2EE counters {encrypted, decrypted, failed, failedNoKey, dropped, byKey, ...}, or null. */
  async e2eeStats() {
    return this.e2ee ? this.e2ee.stats() : null;
  }

  // ---------------------------------------------------------------- statistics

  /**
   * A summary of getStats() per subscribed track:
   * {connectionState, remote: {trackId: {participant, kind, source, state, framesDecoded,
   *  frameWidth, frameHeight, nackCount, packetsLost, totalSamplesReceived, freezeCount,
   *  totalFreezesDuration, packetsReceived, retransmittedPacketsReceived, bytesReceived,
   *  concealedSamples}}} where `state` is the server's stream_state ("active" | "paused").
   */
  async stats() {
    const out = { connectionState: this.pc ? this.pc.connectionState : "new", remote: {} };
    if (!this.pc) return out;
    const subs = [...this._subs.values()];
    const entries = {};
    for (const sub of subs) {
      const track = this._findTrack(sub.trackId);
      entries[sub.trackId] = {
        participant: sub.participant,
        kind: sub.kind,
        source: track && track.source ? track.source : sub.kind === "video" ? "camera" : "microphone",
        state: sub.state,
        framesDecoded: 0,
        frameWidth: 0,
        frameHeight: 0,
        nackCount: 0,
        packetsLost: 0,
        totalSamplesReceived: 0,
        freezeCount: 0,
        totalFreezesDuration: 0,
        packetsReceived: 0,
        retransmittedPacketsReceived: 0,
        bytesReceived: 0,
        concealedSamples: 0,
      };
    }
    out.remote = entries;
    if (this.pc.signalingState === "closed" || subs.length === 0) return out;

    const report = await this.pc.getStats();
    const best = new Map(); // trackId -> the inbound-rtp entry with the latest packet
    report.forEach((s) => {
      if (s.type !== "inbound-rtp") return;
      const sub = subs.find((x) => {
        if (!x.answered) return false; // nothing of its own yet (an idle transceiver's old stream)
        if (x.ssrc !== null) return s.ssrc === x.ssrc;
        return (
          (s.mid !== undefined && x.transceiver.mid !== null && s.mid === x.transceiver.mid) ||
          (s.trackIdentifier !== undefined && s.trackIdentifier === x.transceiver.receiver.track.id)
        );
      });
      if (!sub) return;
      const prev = best.get(sub.trackId);
      if (!prev || (s.lastPacketReceivedTimestamp || 0) > (prev.lastPacketReceivedTimestamp || 0)) {
        best.set(sub.trackId, s);
      }
    });
    for (const [trackId, s] of best) {
      const e = entries[trackId];
      for (const key of [
        "framesDecoded",
        "frameWidth",
        "frameHeight",
        "nackCount",
        "packetsLost",
        "totalSamplesReceived",
        "freezeCount",
        "totalFreezesDuration",
        "packetsReceived",
        "retransmittedPacketsReceived",
        "bytesReceived",
        "concealedSamples",
      ]) {
        if (typeof s[key] === "number") e[key] = s[key];
      }
    }
    return out;
  }
}

export default Room;
