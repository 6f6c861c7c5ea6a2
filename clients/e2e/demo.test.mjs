// End-to-end: the demo page served by the real hub at /demo, in headless Chromium (Debian's
// /usr/bin/chromium driven by playwright-core). Two pages chat: bob sees alice typing and her
// message, bob's page marks it read and alice sees the receipt, alice edits it, bob reloads and
// the history comes back. A screenshot is saved to output/demo.png.
// Run: ./run.sh (installs what is missing), or: node --test demo.test.mjs
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';

import { projectWithRoom, rest, startHub } from '../js/test-support/helpers.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const OUTPUT = path.join(here, 'output');
const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const WAIT = { timeout: 15000 };

let hub;
let context;
let profile;
const pageErrors = [];

before(async () => {
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing: apt-get install chromium fonts-dejavu-core (or run ./run.sh)`);
  hub = await startHub();
  profile = mkdtempSync(path.join(tmpdir(), 'realtimehub-e2e-profile-'));
  // A persistent context is how Playwright takes a --user-data-dir: a fresh one per run.
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    timeout: 30000,
    viewport: { width: 1100, height: 720 },
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-dev-shm-usage',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
});

after(async () => {
  await context?.close().catch(() => {});
  await hub?.stop();
  if (profile) rmSync(profile, { recursive: true, force: true });
});

async function openDemo(apiKey, userId, room) {
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT.timeout);
  page.on('response', (r) => { if (r.status() >= 400) pageErrors.push(`${userId} HTTP ${r.status()} ${r.request().method()} ${r.url()}`); });
  page.on('pageerror', (err) => pageErrors.push(`${userId}: ${err.message}`));
  page.on('console', (msg) => {
    if (msg.type() === 'error') pageErrors.push(`${userId} console: ${msg.text()}`);
  });
  const q = new URLSearchParams({ apiKey, userId, room });
  await page.goto(`${hub.base}/demo?${q}`);
  await page.locator('[data-testid=connection-status][data-state=connected]').waitFor();
  await page.locator('[data-testid=current-room]', { hasText: `#${room}` }).waitFor();
  await page.locator('[data-testid=message-input]:not([disabled])').waitFor();
  assert.equal(await page.locator('[data-testid=connect-form]').isVisible(), false, 'the connect form is hidden once connected');
  return page;
}

const message = (page, text) => page.locator('[data-testid=message]', { has: page.locator('[data-testid=message-content]', { hasText: text }) });

test('two pages chat: typing, message, receipt, edit, reload recovers history', { timeout: 120000 }, async () => {
  const { apiKey, room } = await projectWithRoom(hub.base, 'general');
  // One message from before the pages opened: both must load it from history.
  await rest(hub.base, 'POST', `/api/v1/rooms/${room}/messages`, { apiKey, body: { userId: 'carol', content: 'Welcome to #general!' } });

  const alice = await openDemo(apiKey, 'alice', room);
  const bob = await openDemo(apiKey, 'bob', room);
  await message(alice, 'Welcome to #general!').waitFor();
  await message(bob, 'Welcome to #general!').waitFor();

  // Presence: each sees the other in the member list.
  await alice.locator('[data-testid=member][data-user=bob][data-status=online]').waitFor();
  await bob.locator('[data-testid=member][data-user=alice][data-status=online]').waitFor();

  // Alice types: bob sees the typing indicator.
  const aliceInput = alice.locator('[data-testid=message-input]');
  await aliceInput.click();
  await aliceInput.pressSequentially('Hello bob, how are you?', { delay: 30 });
  await bob.locator('[data-testid=typing-indicator]', { hasText: 'alice is typing…' }).waitFor();

  // Alice sends: bob sees the message, and the typing indicator goes away.
  await aliceInput.press('Enter');
  await message(bob, 'Hello bob, how are you?').waitFor();
  await bob.locator('[data-testid=typing-indicator]', { hasText: /^$/ }).waitFor();
  const sent = message(alice, 'Hello bob, how are you?');
  await sent.and(alice.locator('[data-id]:not(.pending)')).waitFor();
  assert.equal(await message(alice, 'Hello bob, how are you?').count(), 1, 'the optimistic message is replaced, not duplicated');

  // Bob's page marks the visible message read: alice sees the receipt.
  await sent.locator('[data-testid=message-receipts]', { hasText: 'Read by bob' }).waitFor();

  // Bob answers; alice edits her message and bob sees the edit.
  const bobInput = bob.locator('[data-testid=message-input]');
  await bobInput.fill('Fine, thanks!');
  await bobInput.press('Enter');
  await message(alice, 'Fine, thanks!').waitFor();
  await sent.locator('[data-testid=edit-button]').click();
  const editInput = sent.locator('[data-testid=edit-input]');
  await editInput.fill('Hello bob, how are you doing?');
  await editInput.press('Enter');
  const edited = message(bob, 'Hello bob, how are you doing?');
  await edited.locator('[data-testid=message-edited]').waitFor();

  // Bob changes his status: alice sees it.
  await bob.locator('[data-testid=presence-select]').selectOption('away');
  await alice.locator('[data-testid=member][data-user=bob][data-status=away]').waitFor();

  // Bob reloads: the history is recovered, in order, with the edit.
  await bob.reload();
  await bob.locator('[data-testid=connection-status][data-state=connected]').waitFor();
  await message(bob, 'Hello bob, how are you doing?').waitFor();
  const contents = await bob.locator('[data-testid=message] [data-testid=message-content]').allTextContents();
  assert.deepEqual(contents, ['Welcome to #general!', 'Hello bob, how are you doing?', 'Fine, thanks!']);

  // For the screenshot: bob types, alice's page shows it.
  await bob.locator('[data-testid=message-input]').pressSequentially('See you', { delay: 30 });
  await alice.locator('[data-testid=typing-indicator]', { hasText: 'bob is typing…' }).waitFor();
  mkdirSync(OUTPUT, { recursive: true });
  await alice.screenshot({ path: path.join(OUTPUT, 'demo.png'), fullPage: true });
  await bob.screenshot({ path: path.join(OUTPUT, 'demo-bob.png'), fullPage: true });
  console.log(`screenshots: ${path.join(OUTPUT, 'demo.png')}, ${path.join(OUTPUT, 'demo-bob.png')}`);

  assert.deepEqual(pageErrors, [], 'no errors in the pages');
});
