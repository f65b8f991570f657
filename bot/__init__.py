"""The message generator: realistic posts to feedsvc at a speed that can change at runtime."""
