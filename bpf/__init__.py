"""XDP/TC programs (C sources beside this file) and their bcc loader."""
