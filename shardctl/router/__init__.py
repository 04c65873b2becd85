"""The application's library: the Router, its catalog watcher, pools and deadlines."""
