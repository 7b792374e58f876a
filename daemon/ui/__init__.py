"""The browser pages under /ui/ (SPEC §9.6): server-rendered, read-only, cookie sign-in."""
