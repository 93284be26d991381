// Firefox ESR on the demo meeting page, for tests/integration/test_firefox_meeting.py.
//
//   node firefox_meeting.mjs PAGE_URL SECONDS
//
// Launches the system Firefox ESR headless through puppeteer-core over WebDriver BiDi (no
// geckodriver), with fake camera and microphone and the page's origin treated as secure
// (the test serves it over plain HTTP from a network namespace lab), opens PAGE_URL and
// prints one JSON object a line: the page's state, then `window.sfuStats()` every half
// second, until SECONDS have passed or standard input closes. Firefox gathers no loopback
// candidates: the test runs this inside a network namespace.
import puppeteer from "puppeteer-core";

const [pageUrl, seconds] = process.argv.slice(2);
const origin = new URL(pageUrl);
const say = (event) => process.stdout.write(JSON.stringify(event) + "\n");

const browser = await puppeteer.launch({
  browser: "firefox",
  executablePath: process.env.FIREFOX || "/usr/bin/firefox-esr",
  headless: true,
  protocol: "webDriverBiDi",
  extraPrefsFirefox: {
    "media.navigator.streams.fake": true,
    "media.navigator.permission.disabled": true,
    "media.devices.insecure.enabled": true,
    "media.getusermedia.insecure.enabled": true,
    "dom.securecontext.allowlist": origin.hostname,
    "media.peerconnection.ice.loopback": false,
    "media.peerconnection.ice.default_address_only": false,
    "media.peerconnection.ice.obfuscate_host_addresses": false,
    "datareporting.policy.dataSubmissionEnabled": false,
    "toolkit.telemetry.enabled": false,
    "app.update.enabled": false,
    "network.captive-portal-service.enabled": false,
    "network.connectivity-service.enabled": false,
  },
});
let done = false;
const finish = async (code) => {
  if (done) return;
  done = true;
  await browser.close().catch(() => {});
  process.exit(code);
};
process.stdin.on("close", () => finish(0));
setTimeout(() => finish(0), Number(seconds) * 1000);

try {
  const page = await browser.newPage();
  page.on("console", (msg) => say({ event: "console", text: msg.text().slice(0, 300) }));
  await page.goto(pageUrl);
  say({ event: "loaded", version: await browser.version() });
  for (;;) {
    const state = await page.evaluate(() => window.sfuState || null);
    const stats = await page.evaluate(() => (window.sfuStats ? window.sfuStats() : null));
    say({ event: "stats", t: performance.now() / 1000, state, stats });
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
} catch (err) {
  say({ event: "error", message: String(err).slice(0, 500) });
  await finish(1);
}
