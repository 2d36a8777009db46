from gankit.cli import main_entry

main_entry()
