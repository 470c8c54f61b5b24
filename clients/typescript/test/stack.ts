/** The dev stack the end-to-end tests run against, as tests/test_typescript_client.py gives it. */
export function stackVariable(name: string): string {
  const value = process.env[name];
  if (!value) {
    throw new Error(
      `${name} is not set: these tests run against the stack that ` +
        "tests/test_typescript_client.py starts (gateway, worker, Temporal)",
    );
  }
  return value;
}

/** A user the gateway has not seen; its password is the one the secrets scan looks for. */
export function newUser(): { email: string; name: string; password: string } {
  const unique = crypto.randomUUID().slice(0, 12);
  return {
    email: `ada.${unique}@example.com`,
    name: "Ada Lovelace",
    password: stackVariable("NEXPO_TEST_PASSWORD"),
  };
}
