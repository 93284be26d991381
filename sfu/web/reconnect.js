// Keeping a meeting alive across lost connections (docs/protocol.md, "Reconnecting").
//
// The page builds a fresh Room (sfu-client.js) for every attempt; this module only decides
// when to try and how long to wait. A Room that closes because the connection broke, the
// server went away (restart, drain) or media failed is reconnected with backoff; a leave,
// a removal by a host or a refused join is final. The new Room joins with `resume: true`,
// so a server that still holds our place (rooms.resume_grace_s) resumes it: same participant,
// no "ghost" duplicate, our subscriptions bound again.

/** Delays between attempts, in ms; the last one repeats (with +-20% jitter, so clients of a
 * restarted server do not all come back in step). Short: a network that returns should be
 * used at once, and each attempt is one WebSocket connection. */
export const RECONNECT_DELAYS_MS = [200, 500, 1000];
/** An attempt whose WebSocket has not joined within this long is abandoned and the next one
 * starts: a connection opened while the network was down waits on TCP's SYN retransmission
 * backoff (1, 3, 7 s...), which would delay the return by seconds. */
export const JOIN_ATTEMPT_TIMEOUT_MS = 2000;
/** Give up (and show the error) after trying this long. */
export const RECONNECT_GIVE_UP_MS = 5 * 60 * 1000;

/** Close codes that end the meeting for good: a leave, a host's decision, a refused join. */
const FINAL_CLOSES = new Set([1000, 1008, 1009, 4000, 4003, 4004, 4005, 4006, 4009]);

/** Whether a Room closed with `code` should be reconnected. */
export function shouldReconnect(code, { leaving = false } = {}) {
  if (leaving) return false;
  return !FINAL_CLOSES.has(code);
}

export class Reconnector {
  /**
   * @param {object} options
   * @param {(attempt: number) => Promise<void>} options.connect one attempt: resolves once
   *   joined (and republished), rejects (with the SfuError of the failed join) otherwise
   * @param {(status: string, detail?: object) => void} [options.onStatus] "reconnecting",
   *   "reconnected" (detail: {attempts, ms}) or "gave_up"
   * @param {number[]} [options.delays]
   * @param {number} [options.giveUpMs]
   */
  constructor({ connect, onStatus = () => {}, delays = RECONNECT_DELAYS_MS, giveUpMs = RECONNECT_GIVE_UP_MS }) {
    this._connect = connect;
    this._onStatus = onStatus;
    this._delays = delays;
    this._giveUpMs = giveUpMs;
    this._timer = null;
    this._running = false;
    this._cancelled = false;
  }

  get running() {
    return this._running;
  }

  /** Start reconnecting (does nothing while already at it). */
  start() {
    if (this._running) return;
    this._running = true;
    this._cancelled = false;
    const started = performance.now();
    let attempt = 0;
    this._onStatus("reconnecting", { attempt });
    const next = () => {
      if (this._cancelled) return;
      const base = this._delays[Math.min(attempt, this._delays.length - 1)];
      const delay = base * (0.8 + 0.4 * Math.random());
      this._timer = setTimeout(async () => {
        this._timer = null;
        if (this._cancelled) return;
        attempt += 1;
        try {
          await this._connect(attempt);
        } catch (err) {
          if (this._cancelled) return;
          if (err && err.final) {
            this._running = false;
            this._onStatus("gave_up", { attempt, error: err });
            return;
          }
          if (performance.now() - started > this._giveUpMs) {
            this._running = false;
            this._onStatus("gave_up", { attempt, error: err });
            return;
          }
          this._onStatus("reconnecting", { attempt, error: err });
          next();
          return;
        }
        this._running = false;
        this._onStatus("reconnected", { attempts: attempt, ms: Math.round(performance.now() - started) });
      }, delay);
    };
    next();
  }

  /** Stop trying (the user left). */
  cancel() {
    this._cancelled = true;
    this._running = false;
    clearTimeout(this._timer);
    this._timer = null;
  }
}

/** `promise`, or a rejection (code "timeout") after `ms`; `onTimeout` cleans up the loser. */
export function withTimeout(promise, ms, onTimeout = () => {}) {
  let timer = null;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => {
      const err = new Error(`no answer within ${ms} ms`);
      err.code = "timeout";
      reject(err); // first, so the race settles with it and not with what onTimeout causes
      onTimeout();
    }, ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
